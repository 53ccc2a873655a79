"""`sd-env run` and `sd-env shell`: a real command in a real target venv, through exec."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sd_env.target import inventory_cache, trainenv
from tests.conftest import tiny_component
from tests.kit.faultkit import make_wheel

PRINT_ENV = ("import json, os, resource, sys; print(json.dumps({'python': sys.executable, "
             "'device': os.environ.get('ACCELERATE_TORCH_DEVICE'), 'venv': os.environ.get('VIRTUAL_ENV'), "
             "'hf': os.environ.get('HF_ENDPOINT'), 'nofile': resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))")


def sd_env(project, *args: str, stdin: str | None = None, soft_nofile: int | None = None,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """sd-env in a subprocess: run and shell exec, which would replace pytest itself."""
    def lower_limit() -> None:
        if soft_nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    argv = [sys.executable, "-m", "sd_env", args[0], "-m", str(project.manifest), "--home", str(project.home),
            *args[1:]]
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "ACCELERATE_TORCH_DEVICE")}
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})}, preexec_fn=lower_limit)


@pytest.fixture
def target(project, upstream, fresh_target: Path) -> Path:
    project.write_manifest([tiny_component(upstream, None)])  # device = "tpu:0", no torch_tpu in the venv
    return fresh_target


def expected_nofile(soft: int) -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return trainenv.NOFILE if hard == resource.RLIM_INFINITY or hard >= trainenv.NOFILE else max(soft, hard)


def test_run_sees_the_target_and_the_training_variables(project, target):
    got = sd_env(project, "run", "--python", str(target), "--", "python", "-c", PRINT_ENV, soft_nofile=1024,
                 env={"HF_ENDPOINT": "https://hf-mirror.example"})
    assert got.returncode == 0, got.stderr
    seen = json.loads(got.stdout)
    assert seen["python"] == str(target)  # `python` is the target's: its bin comes first on PATH
    assert seen["venv"] == str(target.parent.parent)
    assert seen["device"] == "cpu" and "torch_tpu is not installed in the target" in got.stderr
    assert seen["hf"] == "https://hf-mirror.example" and "passed through: HF_ENDPOINT=" in got.stderr
    assert seen["nofile"] == expected_nofile(1024)
    if seen["nofile"] < trainenv.NOFILE:  # this machine's hard limit is too low: said, not hidden
        assert "WARNING: ulimit -n" in got.stderr and "limits.conf" in got.stderr


def test_run_device_override_and_exit_code(project, target):
    got = sd_env(project, "run", "--python", str(target), "--device", "tpu:0", "--", "python", "-c",
                 "import os, sys; print(os.environ['ACCELERATE_TORCH_DEVICE']); sys.exit(7)")
    assert got.returncode == 7 and got.stdout.strip() == "tpu:0"
    assert "ACCELERATE_TORCH_DEVICE=tpu:0 (--device)" in got.stderr
    missing = sd_env(project, "run", "--python", str(target), "--", "no-such-command-here")
    assert missing.returncode == 2 and "no-such-command-here: command not found" in missing.stderr


def test_shell_reads_a_here_document(project, target):
    script = f"python -c \"{PRINT_ENV}\"\nexit 5\n"
    got = sd_env(project, "shell", "--python", str(target), stdin=script, env={"SHELL": "/bin/bash"})
    assert got.returncode == 5, got.stderr
    seen = json.loads(got.stdout)
    assert seen["python"] == str(target) and seen["device"] == "cpu" and seen["venv"] == str(target.parent.parent)


def test_no_target_is_a_clear_error(project, upstream):
    project.write_manifest([tiny_component(upstream, None)])
    got = sd_env(project, "run", "--", "python", "-V")
    assert got.returncode == 2 and "no target environment" in got.stderr and "bootstrap" in got.stderr


def run_logs(project) -> list[str]:
    return [p.read_text() for p in sorted((project.home / "logs").glob("*-run.log"))]


def test_run_reuses_the_inventory_until_the_target_changes(project, target, tmp_path):
    """The second `run` starts no target interpreter before the command, and imports neither rich,
    packaging nor urllib (about 0.1 s of start-up it does not need: bench/command_overhead.py); after
    torch_tpu is installed (and the racy margin has passed, so only the stamp can tell) the next one sees it."""
    print_device = ["--", "python", "-c", "import os; print(os.environ['ACCELERATE_TORCH_DEVICE'])"]
    time.sleep(inventory_cache.MARGIN + 0.2)  # the fresh venv's folders are old enough to be kept
    got = sd_env(project, "run", "--python", str(target), *print_device)
    assert got.returncode == 0 and got.stdout.strip() == "cpu", got.stderr
    argv = [sys.executable, "-X", "importtime", "-m", "sd_env", "run", "-q", "-m", str(project.manifest),
            "--home", str(project.home), "--python", str(target), *print_device]
    got = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and got.stdout.strip() == "cpu", got.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in got.stderr.splitlines() if line.startswith("import time:")}
    assert "sd_env.workflows.run" in loaded  # (importlib.import_module's own imports are not listed)
    assert not {m for m in loaded if m.split(".")[0] in ("rich", "packaging") or m == "urllib.request"}
    assert ["inventory.py" in log for log in run_logs(project)] == [True, False]  # read once, then kept

    wheel = make_wheel(tmp_path / "wheels", "torch-tpu", "2.1.0.post1")
    subprocess.run([str(target), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    time.sleep(inventory_cache.MARGIN + 0.2)
    got = sd_env(project, "run", "--python", str(target), *print_device)
    assert got.stdout.strip() == "tpu:0" and "the manifest's device" in got.stderr, got.stderr
    assert ["inventory.py" in log for log in run_logs(project)] == [True, False, True]
