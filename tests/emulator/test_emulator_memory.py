"""The emulated device's memory accounting, in both torch_tpu eras: allocate, free, peak, the
capacity and the card's out-of-memory error, per device, what a rehearsal reads at exit.

The counters are the emulator's own (torch_tpu.emulator, both eras); the 2.8-era plugin's
functions (torch.tpu.memory_allocated, ...) read the same counters and exist only in 2.8.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sd_env.verify import emulation
from tests.conftest import ERAS

pytestmark = pytest.mark.slow
MIB = 2**20

# Runs in the target; prints one JSON line. `stats(d)` is the device's allocated_bytes counters.
PRELUDE = """
import json, torch, torch_tpu
from torch_tpu import emulator
def stats(d=0):
    return emulator.memory_stats(d)["allocated_bytes"]
out = {}
"""


def run(era_target: tuple[Path, emulation.Emulator], code: str, **env: str) -> dict:
    python, emu = era_target
    done = subprocess.run([str(python), "-c", PRELUDE + code + "\nprint(json.dumps(out))"],
                          env={**os.environ, **emulation.environment(emu), **env}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def rounded(era: str, nbytes: int) -> int:
    """What the era's allocator charges: the 2.8-era one rounds up to 1 MiB (TPU_ALLOCATOR_ALIGN_SIZE)."""
    return -(-nbytes // MIB) * MIB if era == "2.8" else nbytes


@pytest.mark.parametrize("era", ERAS)
def test_allocate_free_and_peak(era: str, emulated) -> None:
    got = run(emulated(era), """
base = stats()["current"]
x = torch.empty(3 * 2**20 + 5, dtype=torch.uint8, device="tpu")   # a fresh allocation
y = x.float() * 2          # x.float() is allocated, then freed; the product is a CPU kernel's result, adopted
out["after_alloc"] = stats()["current"] - base
del x, y
out["after_free"] = stats()["current"] - base
out["peak"] = stats()["peak"] - base
emulator_peak = emulator.stats()["devices"][0]["peak_bytes"]
storage = torch.empty(4, device="tpu").untyped_storage()  # resize_ grows it through the device's allocator
before = stats()["current"]
storage.resize_(3 * 2**20)
out["resized"] = stats()["current"] - before
if hasattr(torch.tpu, "memory_allocated"):  # the 2.8-era functions read the same counters
    out["api"] = [torch.tpu.memory_allocated(), torch.tpu.max_memory_allocated() == emulator_peak]
    torch.tpu.reset_peak_memory_stats()
    out["peak_after_reset"] = torch.tpu.max_memory_allocated() == torch.tpu.memory_allocated()
    torch.tpu.empty_cache()
    out["flat"] = sorted(k for k in torch.tpu.memory_stats() if k.startswith("allocated_bytes.all."))
""")
    n = 3 * MIB + 5
    live, peak = rounded(era, n) + rounded(era, 4 * n), rounded(era, n) + 2 * rounded(era, 4 * n)
    assert (got["after_alloc"], got["after_free"], got["peak"]) == (live, 0, peak), got
    assert got["resized"] == rounded(era, 3 * MIB) - rounded(era, 16), got
    if era == "2.8":
        assert got["api"][1] and got["peak_after_reset"], got
        assert got["flat"] == [f"allocated_bytes.all.{k}" for k in ("allocated", "current", "freed", "peak")]
    else:
        assert "api" not in got  # the 2.1-era plugin has no memory functions


@pytest.mark.parametrize("era", ERAS)
def test_capacity_exceeded_fails_like_the_card(era: str, emulated) -> None:
    got = run(emulated(era), """
a = torch.empty(40 * 2**20, dtype=torch.uint8, device="tpu")          # 40 MiB of 64
for what, make in (("alloc", lambda: torch.empty(30 * 2**20, dtype=torch.uint8, device="tpu")),
                   ("result", lambda: torch.cat([a, a]))):              # a CPU kernel's 80 MiB result
    try:
        make()
        out[what] = None
    except RuntimeError as exc:
        out[what] = str(exc)
out["ooms"] = emulator.memory_stats(0)["num_ooms"]
out["still"] = stats()["current"] == 40 * 2**20
b = torch.empty(20 * 2**20, dtype=torch.uint8, device="tpu")          # what fits still works
out["capacity"] = emulator.stats()["devices"][0]["capacity_bytes"]
""", SD_ENV_EMULATED_MEMORY="64M")
    card = "Failed to allocate memory on TPU device #0 size = "
    for what in ("alloc", "result"):
        assert got[what] and got[what].startswith(card), got
        assert "SD_ENV_EMULATED_MEMORY" in got[what]
        if era == "2.8":  # the 2.8-era message names the free delay its __init__ sets
            assert "TPU_ALLOCATOR_FREE_DELAY_IN_MS' and current value is 99999ms" in got[what]
    assert got["ooms"] == 2 and got["still"] and got["capacity"] == 64 * MIB, got


@pytest.mark.parametrize("era", ERAS)
def test_each_device_counts_its_own(era: str, emulated) -> None:
    got = run(emulated(era), """
x0 = torch.ones(2**18, device="tpu:0")
x1 = torch.ones(2**19, device="tpu:1")
y1 = x1 + 1                              # computed on tpu:1, counted there
out["devices"] = [(d["index"], d["current_bytes"]) for d in emulator.stats()["devices"]]
out["where"] = str(y1.device)
""", SG_MAX_DEVICE_COUNT="2", SD_ENV_EMULATED_MEMORY="5M")  # per device: tpu:1 holds 4 MiB of its 5
    one, two = rounded(era, 2**20), rounded(era, 2 * 2**20)
    assert got["devices"] == [[0, one], [1, 2 * two]] and got["where"] == "tpu:1", got


@pytest.mark.parametrize("era", ERAS)
def test_stats_at_exit_and_cpu_fallback_counts(era: str, emulated, tmp_path: Path) -> None:
    """What a rehearsal reads: one JSON line per process at exit (peak per device), and the ops the
    device was told to lack, counted by name."""
    out_file = tmp_path / "stats.jsonl"
    for _ in range(2):  # two processes append to the same file
        run(emulated(era), """
x = torch.ones(64, 64, device="tpu")
for _ in range(3):
    y = x @ x
z = torch.nn.functional.interpolate(x[None, None], scale_factor=2)
""", SD_ENV_EMULATOR_STATS=str(out_file), SD_ENV_EMULATED_CPU_OPS="aten::mm,upsample_nearest2d")
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["pid"] != lines[1]["pid"]
    first = lines[0]
    assert first["cpu_fallback"] == {"aten::mm": 3, "aten::upsample_nearest2d": 1}, first
    assert first["devices"][0]["peak_bytes"] >= rounded(era, 4 * 64 * 64) and first["profile"] is None
