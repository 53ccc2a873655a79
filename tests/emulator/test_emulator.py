"""The emulated tpu device against the CPU, in real targets of both torch_tpu eras.

One target process per era (the torch 2.1 stack's and the torch 2.8 stack's)
runs every case of emulator_cases.py (torch is imported once); each case is
reported as its own test, per era.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sd_env.verify import emulation
from tests.conftest import ERAS
from tests.kit import emulator_cases

pytestmark = pytest.mark.slow
CASES_SCRIPT = Path(emulator_cases.__file__)


def run_target(python: Path, emu: emulation.Emulator, code_or_script: list[str], **env: str) -> str:
    done = subprocess.run([str(python), *code_or_script], env={**os.environ, **emulation.environment(emu), **env},
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="session")
def case_results(emulated) -> Callable[[str], dict[str, list]]:
    """case_results(era) -> {case: [ok, detail]}: each era's cases run once, with 2 devices (for
    device_argument_keeps_its_index)."""
    done: dict[str, dict[str, list]] = {}

    def get(era: str) -> dict[str, list]:
        if era not in done:
            python, emu = emulated(era)
            out = run_target(python, emu, [str(CASES_SCRIPT)], SG_MAX_DEVICE_COUNT="2")
            done[era] = json.loads(out.strip().splitlines()[-1])
        return done[era]

    return get


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("name", list(emulator_cases.CASES))
def test_case(name: str, era: str, case_results: Callable[[str], dict[str, list]]) -> None:
    ok, detail = case_results(era)[name]
    assert ok, detail


@pytest.mark.parametrize("era", ERAS)
def test_device_count_follows_sg_max_device_count(era: str, emulated) -> None:
    python, emu = emulated(era)
    code = ("import torch, torch_tpu; x = torch.ones(2, device='tpu:2'); "
            "print(torch.tpu.device_count(), torch.tpu.is_available(), x.device, len(torch.tpu.default_generators))")
    assert run_target(python, emu, ["-c", code], SG_MAX_DEVICE_COUNT="3").split() == ["3", "True", "tpu:2", "3"]
    code = "import torch, torch_tpu; print(torch.tpu.device_count(), torch.tpu.is_available())"
    assert run_target(python, emu, ["-c", code], SG_MAX_DEVICE_COUNT="0").split() == ["0", "False"]


@pytest.mark.parametrize("era", ERAS)
def test_each_era_exports_its_plugins_surface(era: str, emulated) -> None:
    """The 2.8-era plugin's functions exist only in the 2.8 emulation: code calling them on a 2.1 card fails."""
    python, emu = emulated(era)
    names = ["memory_allocated", "max_memory_allocated", "reset_peak_memory_stats", "memory_stats", "empty_cache",
             "get_device_properties", "get_device_name", "get_rng_state_all", "set_rng_state_all", "synchronize",
             "manual_seed", "get_autocast_dtype"]
    code = (f"import json, torch, torch_tpu; print(json.dumps([torch_tpu.__version__, "
            f"{{n: hasattr(torch.tpu, n) for n in {names!r}}}, torch.tpu.amp.GradScaler.__name__]))")
    version, has, scaler = json.loads(run_target(python, emu, ["-c", code]).splitlines()[-1])
    assert version == f"{era}.0.post1+emulated" and scaler == "GradScaler"
    newer = set(names[:9])
    assert {n for n, there in has.items() if there} == (set(names) if era == "2.8" else set(names) - newer), has
