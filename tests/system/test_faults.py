"""kill -9 at every step of install and repatch, and two runs at once on one home.

sd-env runs in a subprocess that kills itself with SIGKILL at a named point
(faults.POINTS, through SD_ENV_TEST_KILL_AT) or is killed by the test in the
middle of a long subprocess (clone, patch, editable build, lock install).
No `finally` runs, exactly as with kill -9. The next run must end with the
verified environment: status clean, no half-applied patch, no temporary file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sd_env.system import faults
from tests.conftest import run_in
from tests.kit.faultkit import leftovers, offline_env, sd_env, two_patch_project, verified
from tests.patching.test_repatch import OLD, SCALER, install_tiny

INSTALL_POINTS = ["locked", "lock-installed", "fetched", "moved", "half-patched", "patched", "built",
                  "atomic-write", "state-saved"]
# Kills by time: (a stderr line, seconds after it) in the middle of the long subprocesses.
INSTALL_TIMED = [("installing 1 of 1 locked packages", 0.5), ("cloning tinypkg", 0.05),
                 ("patching tinypkg", 0.02), ("installing tinypkg (editable", 0.3),
                 ("installing tinypkg (editable", 0.8)]  # pip's editable build takes over a second
REPATCH_POINTS = ["locked", "repatch-fetched", "fetched", "ported", "atomic-write", "atomic-write#2",
                  "finishing", "patches-written", "manifest-written", "swapped", "state-saved", "repatch-built"]
REPATCH_TIMED = [("fetching tinypkg v1.3", 0.05), ("porting tinypkg-1.0-tpu.diff", 0.1),
                 ("installing tinypkg 1.3 (editable", 0.8)]


def test_every_kill_point_is_tried():
    assert set(INSTALL_POINTS + REPATCH_POINTS) >= {p.partition("#")[0] for p in faults.POINTS}
    print(f"kill points: {len(INSTALL_POINTS) + len(INSTALL_TIMED)} install, "
          f"{len(REPATCH_POINTS) + len(REPATCH_TIMED)} repatch")


@pytest.fixture
def wheels(tmp_path):
    return tmp_path / "wheels"


def _assert_clean_install(project, python, env):
    verified(project, python, env)
    assert run_in(python, SCALER) == "torch_tpu.GradScaler"
    assert run_in(python, "import tinydep; print(tinydep.__version__)") == "1.0"
    assert leftovers(project.home, project.root / "patches", project.manifest.parent) == []
    assert (project.home / "sd-env.lock").read_text() == ""  # no holder left behind


@pytest.mark.parametrize("how", INSTALL_POINTS + [f"{line} +{s}s" for line, s in INSTALL_TIMED])
def test_install_killed_then_rerun(project, upstream, fresh_target, wheels, how):
    two_patch_project(project, upstream, wheels)
    env = offline_env(wheels)
    if "+" in how:
        line, _, after = how.rpartition(" +")
        killed = sd_env(project, "install", "--no-uv", python=fresh_target, env=env, kill_on=line,
                        kill_after=float(after.rstrip("s")))
    else:
        killed = sd_env(project, "install", "--no-uv", python=fresh_target, env={**env, faults.ENV: how})
    assert killed.returncode == -9, killed.stderr
    again = sd_env(project, "install", "--no-uv", python=fresh_target, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "was killed before it finished" in again.stderr  # the holder's pid was left in the lock file
    _assert_clean_install(project, fresh_target, env)


@pytest.fixture
def ported_home(project, upstream, fresh_target):
    return install_tiny(project, upstream, fresh_target)


@pytest.mark.parametrize("how", REPATCH_POINTS + [f"{line} +{s}s" for line, s in REPATCH_TIMED])
def test_repatch_killed_then_rerun(ported_home, fresh_target, wheels, how):
    project = ported_home
    env = offline_env(wheels)
    to = ("repatch", "--to", "tinypkg==1.3")
    if "+" in how:
        line, _, after = how.rpartition(" +")
        killed = sd_env(project, *to, python=fresh_target, env=env, kill_on=line, kill_after=float(after.rstrip("s")))
    else:
        killed = sd_env(project, *to, python=fresh_target, env={**env, faults.ENV: how})
    assert killed.returncode == -9, killed.stderr
    # The same command again; a port stopped before finishing is aborted and redone (README).
    again = sd_env(project, *to, python=fresh_target, env=env)
    if again.returncode == 2 and "already in progress" in again.stderr:
        assert sd_env(project, "repatch", "--abort", python=fresh_target, env=env).returncode == 0
        again = sd_env(project, *to, python=fresh_target, env=env)
    assert again.returncode == 0 or "already at 1.3" in again.stderr, again.stdout + again.stderr
    verified(project, fresh_target, env)
    assert run_in(fresh_target, "import tinypkg; print(tinypkg.__version__)") == "1.3"
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
    assert 'version = "1.3"' in project.manifest.read_text()
    assert sorted(p.name for p in (project.root / "patches").iterdir()) == [OLD, "tinypkg-1.3-tpu.diff"]
    assert not (project.home / "repatch").exists() or not list((project.home / "repatch").iterdir())
    assert leftovers(project.home, project.root / "patches", project.manifest.parent) == []


# --- two runs at once -------------------------------------------------------------------------------------


def _start(project, *args, python, env):
    """sd-env in the background, pausing 6 s just after it took the home's lock."""
    argv_env = {**env, faults.PAUSE: "locked:6"}
    argv = [sys.executable, "-m", "sd_env", args[0], "-m", str(project.manifest), "--home", str(project.home),
            "--python", str(python), *args[1:]]
    return subprocess.Popen(argv, env=argv_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until_locked(project, proc, timeout=60):
    lock = project.home / "sd-env.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text().startswith(str(proc.pid)):
            return
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


def test_two_installs_at_once(project, upstream, fresh_target, wheels):
    two_patch_project(project, upstream, wheels)
    env = offline_env(wheels)
    first = _start(project, "install", "--no-uv", python=fresh_target, env=env)
    _until_locked(project, first)
    busy = sd_env(project, "install", "--no-uv", python=fresh_target, env=env)
    assert busy.returncode == 3
    assert f"another sd-env run (pid {first.pid}, `install`) is using {project.home}" in busy.stderr
    assert "--wait" in busy.stderr
    waited = sd_env(project, "install", "--no-uv", "--wait", python=fresh_target, env=env)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert waited.returncode == 0, waited.stderr
    assert f"waiting for another sd-env run (pid {first.pid}, `install`) to finish" in waited.stderr
    assert "up to date" in waited.stdout  # the second found the first's work done
    _assert_clean_install(project, fresh_target, env)


def test_install_and_repatch_at_once(ported_home, fresh_target, wheels):
    project = ported_home
    env = offline_env(wheels)
    first = _start(project, "install", python=fresh_target, env=env)
    _until_locked(project, first)
    busy = sd_env(project, "repatch", "--to", "tinypkg==1.2", python=fresh_target, env=env)
    assert busy.returncode == 3 and f"(pid {first.pid}, `install`)" in busy.stderr
    assert not (project.home / "repatch").exists()
    waited = sd_env(project, "repatch", "--to", "tinypkg==1.2", "--wait", "--json", python=fresh_target, env=env)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["results"][-1]["step"] == "finish"
    verified(project, fresh_target, env)
    assert run_in(fresh_target, "import tinypkg; print(tinypkg.__version__)") == "1.2"


def test_leftovers_of_a_killed_run_are_removed_under_the_lock(tmp_path, capsys):
    """Temporary names of this sd-env and of older ones; files that only look alike stay."""
    from sd_env.system import homelock
    from sd_env.system.paths import Paths

    paths = Paths(tmp_path / "home")
    patches_dir = tmp_path / "patches"
    made = [paths.home / ".state.json.abc.sd-env-tmp", paths.home / ".state-x1y2", paths.repatch / "session.json.tmp",
            paths.wheels / "torch_tpu-2.1.0-cp39-cp39-linux_x86_64.whl.partial", patches_dir / "a-1.0-tpu.diff.tmp",
            paths.src / "tinypkg" / ".git" / "sd-env-index-k3j4", paths.work / "tinypkg-x" / "setup.py"]
    kept = [paths.home / "state.json", patches_dir / "a-1.0-tpu.diff", paths.src / "tinypkg" / "notes.tmp"]
    for path in made + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    paths.lock.write_text("4242 install\n")  # the holder a kill -9 left behind
    with homelock.hold(paths, "install", wait=False, extra=(patches_dir,)):
        assert paths.lock.read_text() == f"{os.getpid()} install\n"
    assert [p for p in made if p.exists()] == [] and all(p.exists() for p in kept)
    assert paths.lock.read_text() == ""
    err = capsys.readouterr().err
    assert "a previous sd-env run (pid 4242, `install`) was killed before it finished" in err
    assert "removed 6 temporary files of an interrupted run" in err
