"""The emulated tpu device against the CPU, in the real torch 2.1 target.

One target process runs every case of emulator_cases.py (torch is imported
once); each case is reported as its own test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sd_env import emulation
from sd_env.paths import Paths
from tests import emulator_cases

pytestmark = pytest.mark.slow
CASES_SCRIPT = Path(emulator_cases.__file__)


def run_target(python: Path, emu: emulation.Emulator, code_or_script: list[str], **env: str) -> str:
    done = subprocess.run([str(python), *code_or_script], env={**os.environ, **emulation.environment(emu), **env},
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="session")
def case_results(emulator_target: tuple[Path, Paths], emulator: emulation.Emulator) -> dict[str, list]:
    out = run_target(emulator_target[0], emulator, [str(CASES_SCRIPT)])
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(emulator_cases.CASES))
def test_case(name: str, case_results: dict[str, list]) -> None:
    ok, detail = case_results[name]
    assert ok, detail


def test_device_count_follows_sg_max_device_count(emulator_target: tuple[Path, Paths],
                                                  emulator: emulation.Emulator) -> None:
    code = ("import torch, torch_tpu; x = torch.ones(2, device='tpu:2'); "
            "print(torch.tpu.device_count(), torch.tpu.is_available(), x.device, len(torch.tpu.default_generators))")
    assert run_target(emulator_target[0], emulator, ["-c", code], SG_MAX_DEVICE_COUNT="3").split() == \
        ["3", "True", "tpu:2", "3"]
    code = "import torch, torch_tpu; print(torch.tpu.device_count(), torch.tpu.is_available())"
    assert run_target(emulator_target[0], emulator, ["-c", code], SG_MAX_DEVICE_COUNT="0").split() == ["0", "False"]
