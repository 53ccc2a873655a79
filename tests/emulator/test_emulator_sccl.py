"""The emulated "sccl" c10d backend, in both torch_tpu eras: two processes, one per emulated
device (tpu:0, tpu:1), all-reduce, all-gather and broadcast through `init_process_group("sccl")`,
and the backend refuses int64 device tensors as Sophgo's does (its August 2023 commit:
"backend does not support int64"), while CPU int64 still goes through gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sd_env.system.paths import Paths
from sd_env.verify import emulation
from tests.conftest import ERAS

pytestmark = pytest.mark.slow

RANK_SCRIPT = """
import json, torch, torch_tpu, torch.distributed as dist
dist.init_process_group(backend="sccl")
rank = dist.get_rank()
torch_tpu.tpu.set_device(rank)
dev = f"tpu:{rank}"
t = torch.tensor([1.0 + rank, 10.0 * (rank + 1)], device=dev)
dist.all_reduce(t)
out = {"rank": rank, "backend": dist.get_backend(), "device": str(t.device), "sum": t.cpu().tolist()}
h = torch.full((3,), float(rank + 1), dtype=torch.float16, device=dev)
dist.all_reduce(h)
out["half"] = h.cpu().tolist()
got = [torch.empty(2, device=dev) for _ in range(2)]
dist.all_gather(got, torch.tensor([float(rank), 5.0], device=dev))
out["gathered"] = [g.cpu().tolist() for g in got]
b = torch.full((2,), float(rank), device=dev)
dist.broadcast(b, 1)
out["broadcast"] = b.cpu().tolist()
dist.barrier()
try:
    dist.all_reduce(torch.ones(2, dtype=torch.int32, device=dev).to(torch.int64))
    out["int64"] = "accepted"
except RuntimeError as e:
    out["int64"] = str(e).splitlines()[0]
c = torch.ones(2, dtype=torch.int64)
dist.all_reduce(c)
out["cpu_int64"] = c.tolist()
print(json.dumps(out))
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(python: Path, emu: emulation.Emulator, script: str, world: int = 2) -> list[dict]:
    env = {**os.environ, **emulation.environment(emu), "SG_MAX_DEVICE_COUNT": str(world),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world)}
    procs = [subprocess.Popen([str(python), "-c", script], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.splitlines()[-1]) for out, _ in outs]


@pytest.mark.parametrize("era", ERAS)
def test_two_devices_all_reduce_and_int64_refused(era: str, emulated) -> None:
    python, emu = emulated(era)
    ranks = run_ranks(python, emu, RANK_SCRIPT)
    assert [r["device"] for r in ranks] == ["tpu:0", "tpu:1"]
    for r in ranks:
        assert r["backend"] == "sccl"
        assert r["sum"] == [3.0, 30.0]
        assert r["half"] == [3.0, 3.0, 3.0]
        assert r["gathered"] == [[0.0, 5.0], [1.0, 5.0]]
        assert r["broadcast"] == [1.0, 1.0]
        assert r["int64"].startswith("ProcessGroupSCCL::allreduce: int64"), r["int64"]
        assert r["cpu_int64"] == [2, 2]


def test_emulate_devices_runs_torch_launcher_on_two_devices(emulator_target: tuple[Path, Paths],
                                                            emulator: emulation.Emulator, tmp_path: Path) -> None:
    """`sd-env emulate --devices 2 -- python -m torch.distributed.run --nproc_per_node 2 SCRIPT`: a user's own
    script, one process per emulated device, all-reducing through "sccl"."""
    python, paths = emulator_target
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    got = subprocess.run([sys.executable, "-m", "sd_env", "emulate", "--devices", "2", "--home", str(paths.home),
                          "--python", str(python), "--", "python", "-m", "torch.distributed.run", "--nproc_per_node",
                          "2", "--master_port", str(free_port()), str(script)],
                         capture_output=True, text=True, timeout=900)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "2 emulated device(s), tpu:0 to tpu:1" in got.stderr
    ranks = sorted((json.loads(line) for line in got.stdout.splitlines() if line.startswith("{")),
                   key=lambda r: r["rank"])
    assert [(r["device"], r["sum"]) for r in ranks] == [("tpu:0", [3.0, 30.0]), ("tpu:1", [3.0, 30.0])]
