"""Building and caching the emulator, and `sd-env emulate`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sd_env.errors import CommandError, EmulatorUnavailable
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import emulation

BUILD_SCRIPT = str(emulation.source() / "build.py")


def test_key_follows_the_source(tmp_path: Path) -> None:
    copy = tmp_path / "emulator"
    shutil.copytree(emulation.source(), copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    before = emulation.source_hash(copy)
    assert before == emulation.source_hash()
    (copy / "csrc" / "fallback.cpp").write_text((copy / "csrc" / "fallback.cpp").read_text() + "\n// edited\n")
    assert emulation.source_hash(copy) != before


def test_a_target_without_torch_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(EmulatorUnavailable) as err:
        emulation.build(Runner(), Path(sys.executable), Paths(tmp_path))  # sd-env's own venv: no torch
    assert "torch" in err.value.message and "torch==2.1.0" in err.value.hint


@pytest.mark.slow
def test_second_build_is_a_cache_hit(emulator_target: tuple[Path, Paths], emulator: emulation.Emulator) -> None:
    runner = Runner()
    again = emulation.build(runner, emulator_target[0], emulator_target[1])
    assert again.cached and again.pythonpath == emulator.pythonpath and again.key == emulator.key
    assert emulator.key.endswith(emulation.source_hash()) and emulator.key.startswith("torch2.1")
    assert runner.count(BUILD_SCRIPT, "build") == 0 and runner.count(BUILD_SCRIPT, "check") == 1


@pytest.mark.slow
def test_missing_compiler_names_the_install_command(emulator_target: tuple[Path, Paths], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    runner = Runner()
    with pytest.raises(EmulatorUnavailable) as err:
        emulation.build(runner, emulator_target[0], Paths(tmp_path / "home"))
    assert "C++ compiler" in err.value.message and err.value.hint == "sudo apt install g++"
    assert runner.count(BUILD_SCRIPT, "build") == 0
    assert not (tmp_path / "home" / "emulator").exists()


@pytest.mark.slow
def test_failed_build_leaves_no_cache_entry(emulator_target: tuple[Path, Paths], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", shutil.which("false") or "false")  # a "compiler" that always fails
    paths = Paths(tmp_path / "home")
    killed = paths.emulators / ".torch2.1.0-py3.9-0123.building-999999999"  # left by a killed build
    killed.mkdir(parents=True)
    with pytest.raises(CommandError):
        emulation.build(Runner(), emulator_target[0], paths)
    assert list(paths.emulators.iterdir()) == []


@pytest.mark.slow
def test_emulate_runs_the_command_with_the_emulator(emulator_target: tuple[Path, Paths],
                                                    emulator: emulation.Emulator,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    python, paths = emulator_target
    code = ("import os, sys, torch, torch_tpu; print(torch_tpu.EMULATED, os.environ['ACCELERATE_TORCH_DEVICE'], "
            "os.environ['SD_ENV_EMULATED'], torch.ones(1, device='tpu').device, sys.executable); sys.exit(3)")
    # emulate execs the command (as `sd-env run` does): run sd-env in a process of its own.
    got = subprocess.run([sys.executable, "-m", "sd_env", "emulate", "--home", str(paths.home), "--python",
                          str(python), "--", "python", "-c", code], capture_output=True, text=True, timeout=900)
    out, err = got.stdout, got.stderr
    assert got.returncode == 3, err
    assert out.split()[:4] == ["True", "tpu:0", "1", "tpu:0"] and out.split()[4].startswith(str(python.parent))
    assert "tpu:0 is emulated" in err
    # the target itself never gets the emulator
    spec = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch_tpu'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert spec == "None"


@pytest.mark.slow
def test_emulate_strict_on_the_torch_28_stack(sd15_target: tuple[Path, Paths], emulated) -> None:
    """`sd-env emulate -m sc7-sd15-lora --strict`: the torch_tpu 2.8 emulation, its profile, the capacity."""
    python, paths = sd15_target
    emulated("2.8")  # built once per session
    code = ("import os, torch, torch_tpu; print(torch_tpu.__version__, torch_tpu.emulator.stats()['profile'], "
            "os.environ['SD_ENV_EMULATED_MEMORY'], torch.tensor([1, 2], device='tpu').dtype)")
    env = {**os.environ, "SD_ENV_EMULATED_MEMORY": "2G"}
    got = subprocess.run([sys.executable, "-m", "sd_env", "emulate", "-m", "sc7-sd15-lora", "--strict", "--home",
                          str(paths.home), "--python", str(python), "--", "python", "-c", code],
                         capture_output=True, text=True, timeout=900, env=env)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["2.8.0.post1+emulated", "torch_tpu-2.8", "2G", "torch.int32"], got.stdout
    assert "torch_tpu 2.8 on the CPU" in got.stderr and "strict profile torch_tpu-2.8" in got.stderr
    assert "device capacity 2G per device" in got.stderr
