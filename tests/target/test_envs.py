"""Finding or creating the target environment, with real interpreters and venvs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sd_env.errors import InputError
from sd_env.system.runner import Runner
from sd_env.target import envs
from sd_env.target.envs import COMPLETE

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
BASE = Path(sys.base_prefix) / "bin" / f"python{HERE}"


@pytest.fixture(autouse=True)
def no_active_env(monkeypatch):
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON", "CONDA_DEFAULT_ENV"):
        monkeypatch.delenv(var, raising=False)


def test_bare_interpreter_becomes_base_of_a_new_venv_once(tmp_path, subprocess_tmpdir):
    runner = Runner()
    leftovers = set(subprocess_tmpdir.glob("*cacert.pem"))
    made = envs.resolve(runner, str(BASE), tmp_path, HERE)
    # Python 3.9's ensurepip leaves its CA bundle in TMPDIR: the venv got a TMPDIR of its own.
    assert set(subprocess_tmpdir.glob("*cacert.pem")) == leftovers
    assert made.python == tmp_path / "venv" / "bin" / "python"
    assert made.how == "new venv from --python" and made.created and made.inventory is None
    assert (tmp_path / "venv" / COMPLETE).exists()
    again = Runner()
    reused = envs.resolve(again, str(BASE), tmp_path, HERE)
    assert reused.python == made.python and not reused.created
    assert again.count("venv") == 0  # reused, not recreated
    # The inventory read while checking the version is handed on: callers need not probe again.
    assert reused.inventory is not None and reused.inventory.is_env and probes(again) == 2


def probes(runner: Runner) -> int:
    """How many times the runner read an environment's inventory."""
    return sum(any(str(a).endswith("inventory.py") for a in call) for call in runner.calls)


def test_half_made_venv_is_recreated(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to(BASE)
    (tmp_path / "venv" / "leftover").write_text("x")
    runner = Runner()
    python = envs.resolve(runner, str(BASE), tmp_path, HERE).python
    assert python is not None and runner.count("venv") == 1
    assert not (tmp_path / "venv" / "leftover").exists()
    assert envs.inventory(runner, python).is_env


def test_an_environment_is_used_as_it_is(tmp_path, target_python):
    found = envs.resolve(Runner(), str(target_python), tmp_path, HERE)
    assert found.python == target_python and found.how == "--python" and not found.created
    assert found.inventory is not None and found.inventory.executable
    assert not (tmp_path / "venv").exists()


def test_active_venv_is_the_target(tmp_path, target_python, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", str(target_python.parents[1]))
    found = envs.resolve(Runner(), None, tmp_path, HERE)
    assert found.python == target_python and found.how == "the active venv" and found.inventory is not None


def test_wrong_version_is_bad_input(tmp_path, target_python):
    with pytest.raises(InputError, match=f"is Python {HERE}.*the manifest wants 3.8") as info:
        envs.resolve(Runner(), str(target_python), tmp_path, "3.8")
    assert info.value.exit_code == 2


def test_no_interpreter_gives_the_commands_that_provide_one(tmp_path):
    with pytest.raises(InputError) as info:
        envs.resolve(Runner(), None, tmp_path, "3.99")
    assert "no Python 3.99 found" in info.value.message
    for command in ("conda create -n sd python=3.99", "pyenv install 3.99", "apt install python3.99"):
        assert command in info.value.hint


def test_conda_creates_the_env_when_there_is_no_python(tmp_path, monkeypatch):
    """No conda here: a stand-in `conda` on PATH makes a real venv where conda would make the env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "conda.log"
    conda = bin_dir / "conda"
    conda.write_text(f'#!/bin/sh\necho "$@" > {log}\n'
                     f'while [ "$1" != "-p" ]; do shift; done\nexec {BASE} -m venv "$2"\n')
    conda.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    found = envs.resolve(Runner(), None, tmp_path / "home", HERE)
    assert found.how == "new conda env" and found.python == tmp_path / "home" / "venv" / "bin" / "python"
    assert found.created
    assert log.read_text().split() == ["create", "-y", "-q", "-p", str(tmp_path / "home" / "venv"),
                                       f"python={HERE}"]
    assert (tmp_path / "home" / "venv" / COMPLETE).exists()
