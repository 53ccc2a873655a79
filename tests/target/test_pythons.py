"""A machine without the stack's Python gets a standalone one under the home (pythons.py, and the
shell side in scripts/find-python.sh), from a mirror served on 127.0.0.1 in the layout uv expects.

The mirror is the session's (conftest.standalone_mirror: archives packed from Pythons present
here, with uv's download metadata); these tests serve it over HTTP and hand its URL to uv as a
user hands it a mirror (--python-mirror, UV_PYTHON_INSTALL_MIRROR, python-mirror in
sd-env.toml), so the server's log shows what uv really fetched. PATH is cut down to /usr/bin and
/bin, which hold no python3.9 (checked), so nothing finds one of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sd_env import report
from sd_env.cli import main
from sd_env.errors import StepError
from sd_env.system.fsutil import sha256_file
from sd_env.system.runner import Runner
from sd_env.target import envs, pythons
from tests.conftest import ROOT
from tests.kit.bundlekit import BUILD_PINS, make_project
from tests.kit.pythonkit import JSON_VAR, MIRROR_VAR, minimal_bin, serve

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
BARE_PATH = "/usr/bin:/bin"
FIND = ROOT / "scripts" / "find-python.sh"


@pytest.fixture
def no_python(monkeypatch, tmp_path):
    """No active environment, a PATH with no python3.X of the tested versions and no pyenv, and a
    HOME of its own (to show nothing is written outside the sd-env home)."""
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON", "CONDA_DEFAULT_ENV", MIRROR_VAR):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # sd-env runs uv and the interpreters by path
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))
    (tmp_path / "user-home").mkdir()
    return tmp_path / "user-home"


@pytest.fixture
def served(standalone_mirror):
    with serve(standalone_mirror.root) as (url, asked):
        yield url, asked


def archive_gets(asked: list[str]) -> list[str]:
    return [a for a in asked if a.startswith("GET ") and a.endswith(".tar.gz")]


@pytest.mark.parametrize("minor", [HERE, "3.10", "3.11"])
def test_a_machine_without_the_python_gets_a_standalone_one_from_the_mirror(minor, no_python, served, tmp_path,
                                                                             standalone_mirror, capsys):
    """The 3.9, 3.10 and 3.11 stacks alike: uv installs the mirror's archive under the home, the
    target venv is made from it, and the messages say what, how large and where."""
    version = standalone_mirror.versions().get(minor)
    if version is None:
        pytest.skip(f"skipped: no Python {minor} on this machine to pack a standalone archive from")
    url, asked = served
    runner = Runner()
    home = tmp_path / "home"
    found = envs.resolve(runner, None, home, minor, sources=pythons.Sources(mirror=url))
    base = home / "python" / f"cpython-{version}-linux-{os.uname().machine}-gnu"
    assert found.created and found.how == f"new venv from {base / 'bin' / f'python{minor}'}"
    cfg = (home / "venv" / "pyvenv.cfg").read_text()
    assert f"home = {base / 'bin'}" in cfg and f"version = {version}" in cfg.replace("version_info", "version")
    # uv fetched this very archive from the mirror (and was asked its size first)
    name = f"cpython-{version}+20990101-{os.uname().machine}-unknown-linux-gnu-install_only_stripped.tar.gz"
    assert archive_gets(asked) == [f"GET /20990101/{name}"], asked
    said = capsys.readouterr().err
    size = report.human((standalone_mirror.root / "20990101" / name).stat().st_size)
    assert f"no Python {minor} found" in said and f"installing a standalone CPython {minor} with uv into " \
        f"{home / 'python'}" in said and f"download {size} from {url}/20990101/" in said, said
    assert f"Python {minor} is {base / 'bin' / f'python{minor}'}" in said
    install = next(c for c in runner.calls if c[1:3] == ["python", "install"])
    assert "--no-bin" in install  # no link in ~/.local/bin: nothing outside the home changes
    assert not (no_python / ".local" / "bin").exists()
    # a second resolve reuses the venv; a new home reuses nothing and would download again
    again = Runner()
    assert envs.resolve(again, None, home, minor, sources=pythons.Sources(mirror=url)).python == found.python
    assert again.count("uv") == 0 and len(archive_gets(asked)) == 1


def test_the_python_under_the_home_is_reused_for_a_new_venv(no_python, served, tmp_path):
    url, asked = served
    home = tmp_path / "home"
    envs.resolve(Runner(), None, home, HERE, sources=pythons.Sources(mirror=url))
    shutil.rmtree(home / "venv")
    runner = Runner()
    found = envs.resolve(runner, None, home, HERE, sources=pythons.Sources(mirror=url))
    assert found.created and runner.count("uv") == 0 and len(archive_gets(asked)) == 1
    assert str(home / "python") in found.how


def test_an_existing_python_still_wins_over_the_download(no_python, served, tmp_path, monkeypatch):
    url, asked = served
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    base = Path(sys.base_prefix) / "bin" / f"python{HERE}"
    (bin_dir / f"python{HERE}").symlink_to(base)
    monkeypatch.setenv("PATH", str(bin_dir))
    runner = Runner()
    found = envs.resolve(runner, None, tmp_path / "home", HERE, sources=pythons.Sources(mirror=url))
    assert found.how == f"new venv from {bin_dir / f'python{HERE}'}"
    assert runner.count("uv") == 0 and asked == [] and not (tmp_path / "home" / "python").exists()
    # and --python names the interpreter whatever else there is
    other = envs.resolve(Runner(), str(base), tmp_path / "home2", HERE, sources=pythons.Sources(mirror=url))
    assert other.how == "new venv from --python" and asked == []


def test_an_unreachable_source_names_the_mirror_setting_and_conda(no_python, tmp_path, monkeypatch):
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")  # a refused connection: no need to ask three times
    with pytest.raises(StepError) as info:
        envs.resolve(Runner(), None, tmp_path / "home", HERE,
                     sources=pythons.Sources(mirror="http://127.0.0.1:9/nothing-here"))
    assert f"no Python {HERE} found" in info.value.message and "uv could not install one" in info.value.message
    for words in ('python-mirror = "URL" in sd-env.toml', MIRROR_VAR, "--python-mirror URL",
                  f"conda create -n sd python={HERE}"):
        assert words in info.value.hint, info.value.hint
    assert not (tmp_path / "home" / "venv").exists()


@pytest.mark.network
def test_install_takes_the_mirror_from_the_project_config(no_python, served, tmp_path, capsys, monkeypatch):
    """python-mirror in sd-env.toml (a config file beside manifests/): `sd-env config` shows it, and
    install hands it to uv; UV_PYTHON_INSTALL_MIRROR (uv's own variable) overrides it. The lock
    (setuptools, wheel: through the package index) lets the new venv build the component."""
    url, asked = served
    (no_python.parent / "empty-bin" / "git").symlink_to(shutil.which("git", path=BARE_PATH) or "git")
    project, _ = make_project(tmp_path, pins=BUILD_PINS)
    (project.root / "sd-env.toml").write_text(f'python-mirror = "{url}"\n')
    assert main(["config", "-m", str(project.manifest), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["settings"]["python-mirror"]
    assert shown == {"key": "python-mirror", "value": url, "source": str(project.root / "sd-env.toml")}
    monkeypatch.setenv(MIRROR_VAR, "http://127.0.0.1:9/")
    assert main(["config", "-m", str(project.manifest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["python-mirror"]["source"] == f"${MIRROR_VAR}"
    monkeypatch.delenv(MIRROR_VAR)
    assert project.cli("install") == 0, capsys.readouterr().err
    assert len(archive_gets(asked)) == 1
    assert str(project.home / "python") in (project.home / "venv" / "pyvenv.cfg").read_text()
    assert "editable" in capsys.readouterr().out


# -- the shell side: scripts/find-python.sh ------------------------------------------------------------------
def bash(script: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f". {FIND}\n{script}", "bash", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_zip_member_unpacks_deflated_and_stored_members_with_gzip(tmp_path):
    """A wheel is a zip: find-python.sh takes a member out with tail, head and gzip alone."""
    payload = os.urandom(3000) + b"uv" * 50000
    wheel = tmp_path / "x.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("x-1.0.dist-info/METADATA", "Name: x\n", compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("x-1.0.data/scripts/uv", payload, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("x-1.0.data/scripts/stored", b"plain bytes", compress_type=zipfile.ZIP_STORED)
    got = bash('zip_member "$1" "x-*.data/scripts/uv" "$2" && zip_member "$1" "*/stored" "$3"',
               str(wheel), str(tmp_path / "uv"), str(tmp_path / "stored"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "uv").read_bytes() == payload and (tmp_path / "stored").read_bytes() == b"plain bytes"
    assert bash('zip_member "$1" "no/such" "$2"', str(wheel), str(tmp_path / "none")).returncode != 0
    # a damaged member is refused by gzip's CRC check, not written as if whole
    data = bytearray(wheel.read_bytes())
    at = data.index(b"x-1.0.data/scripts/uv") + len("x-1.0.data/scripts/uv") + 100
    data[at] ^= 0xFF
    (tmp_path / "bad.whl").write_bytes(bytes(data))
    assert bash('zip_member "$1" "x-*.data/scripts/uv" "$2"', str(tmp_path / "bad.whl"),
                str(tmp_path / "bad")).returncode != 0


def uv_wheel(where: Path) -> Path:
    """A uv wheel of this machine's uv binary, as PyPI's are laid out (uv-V.data/scripts/uv, deflated)."""
    uv = pythons.find_uv()
    assert uv, "the test extras install uv"
    version = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    wheel = where / f"uv-{version}-py3-none-manylinux_2_17_{os.uname().machine}.manylinux2014_{os.uname().machine}.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(uv, f"uv-{version}.data/scripts/uv")
        z.writestr(f"uv-{version}.dist-info/METADATA", f"Name: uv\nVersion: {version}\n")
    return wheel


def test_fetch_uv_takes_the_newest_wheel_from_the_index_with_its_sha256(tmp_path):
    simple = tmp_path / "simple" / "uv"
    simple.mkdir(parents=True)
    wheel = uv_wheel(tmp_path / "simple" / "uv")
    digest = sha256_file(wheel)
    old = "uv-0.0.1-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    (simple / "index.html").write_text(f'<a href="{old}#sha256={"0" * 64}">{old}</a>\n'
                                       f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>\n'
                                       '<a href="uv-0.0.2-py3-none-win_amd64.whl">win</a>\n')
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path), "PIP_INDEX_URL": ""}
    with serve(tmp_path / "simple") as (url, asked):
        got = bash('fetch_uv "$1" "$2"', str(tmp_path / "nowhere"), str(tmp_path / "bin"),
                   env={**env, "PIP_INDEX_URL": url})
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == str(tmp_path / "bin" / "uv")
        assert f"GET /uv/{wheel.name}" in asked and not any(old in a for a in asked)
        assert subprocess.run([str(tmp_path / "bin" / "uv"), "--version"], capture_output=True).returncode == 0
        # a wheel whose bytes are not what the index says is not used
        (simple / "index.html").write_text(f'<a href="{wheel.name}#sha256={"1" * 64}">{wheel.name}</a>\n')
        bad = bash('fetch_uv "$1" "$2"', str(tmp_path / "nowhere"), str(tmp_path / "bin2"),
                   env={**env, "PIP_INDEX_URL": url})
        assert bad.returncode != 0 and "does not have the sha256 the index gives" in bad.stderr
        assert not (tmp_path / "bin2" / "uv").exists()


@pytest.mark.network
def test_fetch_uv_from_the_real_package_index(tmp_path):
    """The real path: the configured index's page for uv (PyPI here), its real wheel, by curl."""
    got = bash('fetch_uv "$1" "$2"', str(tmp_path), str(tmp_path / "bin"),
               env={"PATH": BARE_PATH, "HOME": str(tmp_path), "SSL_CERT_FILE": os.environ.get("SSL_CERT_FILE", "")})
    assert got.returncode == 0, got.stderr
    assert "uv " in subprocess.run([got.stdout.strip(), "--version"], capture_output=True, text=True).stdout


def test_the_shell_reads_the_mirror_flag_variable_and_config_in_that_order(tmp_path):
    (tmp_path / "sd-env.toml").write_text('python-mirror = "mirror-folder"\nindex-url = "https://idx.example/simple"\n')
    env = {"PATH": BARE_PATH, "HOME": str(tmp_path / "h")}
    assert bash('python_mirror "$1"', str(tmp_path), env=env).stdout.strip() == f"file://{tmp_path}/mirror-folder"
    assert bash('python_mirror "$1"', str(tmp_path), env={**env, MIRROR_VAR: "https://m.example/"}
                ).stdout.strip() == "https://m.example/"
    assert bash('python_mirror "$@"', str(tmp_path), "--python-mirror", "http://flag/", env=env).stdout.strip() \
        == "http://flag/"
    assert bash('package_index "$1"', str(tmp_path), env=env).stdout.strip() == "https://idx.example/simple"
    assert bash('stack_version "$1" -m sc7-sd15-lora', str(ROOT), env=env).stdout.strip() == "3.11"
    assert bash('stack_version "$1"', str(ROOT), env=env).stdout.strip() == "3.9"


def test_install_python_from_the_shell(tmp_path, served, standalone_mirror):
    """What bootstrap.sh and scripts/test.sh do without a Python: uv from the PATH here (the no-uv,
    no-Python case is test_bootstrap_with_no_python_at_all), the archive from the mirror."""
    url, asked = served
    uv_dir = Path(pythons.find_uv() or "").parent
    env = {"PATH": f"{uv_dir}:{BARE_PATH}", "HOME": str(tmp_path), JSON_VAR: str(standalone_mirror.meta)}
    got = bash('install_python "$1" "$2" "$3" "$4"', HERE, str(tmp_path / "home"), str(tmp_path), url, env=env)
    assert got.returncode == 0, got.stderr
    python = Path(got.stdout.strip())
    assert python.parent.parent.parent == tmp_path / "home" / "python" and len(archive_gets(asked)) == 1
    assert f"installing a standalone CPython {HERE} with uv into {tmp_path / 'home' / 'python'}" in got.stderr
    assert "Downloading cpython" in got.stderr  # uv's own line, with the size
    assert bash('managed_python "$1" "$2"', str(tmp_path / "home"), HERE, env=env).stdout.strip() == str(python)


@pytest.mark.network
def test_bootstrap_with_no_python_at_all(tmp_path, served, standalone_mirror):
    """A machine with bash, coreutils, sed, grep, gzip, tar, git and curl, and no Python: bootstrap.sh
    fetches uv's wheel from the package index (the real one, PyPI here), installs the stack's
    standalone Python from the mirror for sd-env's own venv, and `sd-env install` makes the target
    from that same interpreter: downloaded once."""
    url, asked = served
    project, _ = make_project(tmp_path, pins=BUILD_PINS)
    env = {"PATH": str(minimal_bin(tmp_path / "bin", "bash", "sed", "grep", "gzip", "tar", "git", "curl")),
           "HOME": str(tmp_path / "user"), "SD_ENV_HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "TMPDIR": os.environ.get("TMPDIR", "/tmp"), JSON_VAR: str(standalone_mirror.meta),
           **{k: v for k, v in os.environ.items() if k in ("SSL_CERT_FILE", "PIP_CERT")}}
    assert shutil.which("python3", path=env["PATH"]) is None and shutil.which("uv", path=env["PATH"]) is None
    got = subprocess.run([shutil.which("bash") or "/bin/bash", str(ROOT / "bootstrap.sh"), "-m", str(project.manifest),
                          "--python-mirror", url, "--no-verify"], env=env, capture_output=True, text=True, timeout=1200)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-5000:]
    home = tmp_path / "home"
    assert "getting uv (uv-" in got.stderr and (home / "bin" / "uv").is_file()
    assert f"installing a standalone CPython {HERE} with uv into {home / 'python'}" in got.stderr
    base = home / "python" / f"cpython-{standalone_mirror.versions()[HERE]}-linux-{os.uname().machine}-gnu" / "bin"
    for venv in ("tool", "venv"):
        assert f"home = {base}" in (home / venv / "pyvenv.cfg").read_text(), venv
    assert len(archive_gets(asked)) == 1, asked
