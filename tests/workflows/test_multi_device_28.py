"""Data-parallel training on 2 emulated tpu devices on Sophgo's current stack (torch 2.8, accelerate
0.30.1): patches/accelerate-0.30.0-tpu-multi.diff proven.

accelerate 0.30.1's own source (the sd15 home's checkout at its upstream commit, `git archive HEAD`)
with accelerate-0.30.0-tpu.diff, then the multi-device patch, put first on PYTHONPATH; the emulated
torch_tpu 2.8 with the manifest's strict profile (int64 never lives on the device); accelerate's own
launcher, one process per emulated device, gradients all-reduced by DistributedDataParallel through
the emulated "sccl" backend; a small real training script (tests/kit/data_parallel_train.py: AdamW,
clipping, gather). After 4 steps both ranks hold identical parameters, equal in fp32 to one process
over both samples of each step. Unpatched, accelerate takes the run for MULTI_CPU and DDP fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.emulator.test_emulator_sccl import free_port, run_ranks
from tests.workflows.test_multi_device import COMPARE, patched_copies
from tests.workflows.test_sd15_emulated import strict_env

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "tests" / "kit" / "data_parallel_train.py"
PATCHES = [ROOT / "patches" / "accelerate-0.30.0-tpu.diff", ROOT / "patches" / "accelerate-0.30.0-tpu-multi.diff"]
NO_DDP = "No backend type associated with device type tpu"  # DDP on the gloo group unpatched accelerate makes


@pytest.fixture(scope="module")
def accelerates(sd15_home: Path, tmp_path_factory) -> dict[str, Path]:
    """accelerate 0.30.1's src/ with the stack's patch ("single") and with the multi-device one too."""
    return patched_copies(tmp_path_factory, ["-C", str(sd15_home / "src" / "accelerate")], "HEAD", PATCHES)


def launch(sd15_emulator, accelerate_src: Path, out: Path, how: list[str], script: Path = SCRIPT,
           mixed: str = "no", *args: str) -> subprocess.CompletedProcess:
    """accelerate's launcher as a user runs it, on 2 emulated devices under the 2.8 profile."""
    python, emu = sd15_emulator
    out.mkdir(parents=True)
    env = strict_env(emu, SG_MAX_DEVICE_COUNT="2", HF_HOME=str(out / "hf-home"))  # no accelerate config of ours
    env["PYTHONPATH"] = os.pathsep.join([str(accelerate_src), env["PYTHONPATH"]])
    argv = [str(python), "-m", "accelerate.commands.launch", *how, "--num_machines", "1", "--mixed_precision", mixed,
            "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script), str(out), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


def ranks(out: Path, count: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(count)]


def test_two_devices_train_like_one_process_over_both_samples(sd15_emulator, accelerates, tmp_path):
    two = launch(sd15_emulator, accelerates["multi"], tmp_path / "two", ["--multi_gpu", "--num_processes", "2"])
    assert two.returncode == 0, two.stderr[-4000:]
    seen = ranks(tmp_path / "two", 2)
    assert [(r["device"], r["backend"], r["wrapper"]) for r in seen] == [
        ("tpu:0", "sccl", "DistributedDataParallel"), ("tpu:1", "sccl", "DistributedDataParallel")], seen
    assert all(r["type"] == "DistributedType.MULTI_GPU" for r in seen), seen
    one = launch(sd15_emulator, accelerates["multi"], tmp_path / "one", ["--num_processes", "1"])
    assert one.returncode == 0, one.stderr[-4000:]
    (single,) = ranks(tmp_path / "one", 1)
    assert (single["device"], single["backend"]) == ("tpu:0", None), single
    python, _ = sd15_emulator
    got = subprocess.run([str(python), "-c", COMPARE, str(tmp_path / "one" / "rank0.pt"),
                          str(tmp_path / "two" / "rank0.pt"), str(tmp_path / "two" / "rank1.pt")],
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]
    compared = json.loads(got.stdout.splitlines()[-1])
    assert compared["tensors"] == [4, 4, 4], compared
    assert compared["ranks_equal"], compared  # DDP's averaged gradients: the same step on both ranks
    assert compared["relative"] < 1e-6, compared  # = one process over both samples (fp32; measured 2.0e-8)
    for r in seen:  # the gathered loss of each step is the single process's batch loss
        assert r["losses"] == pytest.approx(single["losses"], rel=1e-5), (r, single)


def test_fp16_inf_on_one_rank_skips_the_step_on_both(sd15_emulator, accelerates, tmp_path):
    """fp16 (torch_tpu's GradScaler, accelerate-0.30.0-tpu.diff): the loss of rank 1 at step 2 is made inf;
    DDP's averaged gradients carry it to rank 0, so both scalers skip step 2 and halve the scale."""
    got = launch(sd15_emulator, accelerates["multi"], tmp_path / "run", ["--multi_gpu", "--num_processes", "2"],
                 SCRIPT, "fp16", "1:2")
    assert got.returncode == 0, got.stderr[-4000:]
    seen = ranks(tmp_path / "run", 2)
    assert seen[0]["steps"] == seen[1]["steps"], seen  # the same decision on both ranks
    steps = seen[0]["steps"]
    assert [s["skipped"] for s in steps] == [False, True, False, False], steps
    assert steps[1]["scale"] == steps[0]["scale"] / 2, steps


def test_unpatched_accelerate_cannot_start_on_two_tpu_devices(sd15_emulator, accelerates, tmp_path):
    """accelerate 0.30.1 with only the stack's patch knows no multi-process "tpu": no CUDA, NPU or MLU, so it
    takes the run for MULTI_CPU (a gloo group, both processes on ACCELERATE_TORCH_DEVICE's tpu:0), and
    DistributedDataParallel cannot verify the parameters over gloo on a "tpu" device. The launcher fails."""
    got = launch(sd15_emulator, accelerates["single"], tmp_path / "two", ["--multi_gpu", "--num_processes", "2"])
    assert got.returncode == 1, got.stderr[-4000:]
    assert NO_DDP in got.stderr and "_verify_param_shape_across_processes" in got.stderr, got.stderr[-4000:]
    assert "ChildFailedError" in got.stderr
    assert not (tmp_path / "two" / "rank0.pt").exists()


RANKS = "import os; print(f'rank {os.environ[\"RANK\"]} of {os.environ[\"WORLD_SIZE\"]}')\n"


def test_multi_gpu_without_num_processes_takes_every_tpu_device(sd15_emulator, accelerates, tmp_path):
    """`accelerate launch --multi_gpu` with no --num_processes: one process per torch_tpu device when patched;
    unpatched, 0.30.1 counts CUDA devices (none) and torchrun stops on its assertion."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    got = launch(sd15_emulator, accelerates["multi"], tmp_path / "multi", ["--multi_gpu"], script)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "`--num_processes` was set to a value of `2`" in got.stdout + got.stderr
    assert sorted(ln for ln in got.stdout.splitlines() if ln.startswith("rank")) == ["rank 0 of 2", "rank 1 of 2"]
    got = launch(sd15_emulator, accelerates["single"], tmp_path / "single", ["--multi_gpu"], script)
    assert got.returncode == 1
    assert "`--num_processes` was set to a value of `0`" in got.stdout + got.stderr
    assert "assert self.local_world_size > 0" in got.stderr, got.stderr[-3000:]


DDP = """
import json, torch, torch_tpu, torch.distributed as dist
dist.init_process_group(backend="sccl")
rank = dist.get_rank()
torch_tpu.tpu.set_device(rank)
model = torch.nn.Linear(4, 2).to(f"tpu:{rank}")
try:
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank], output_device=rank)
    ddp(torch.full((3, 4), rank + 1.0, device=f"tpu:{rank}")).sum().backward()
    print(json.dumps({"grad": model.weight.grad.cpu().tolist()}))
except RuntimeError as e:
    print(json.dumps({"error": str(e).splitlines()[0]}))
dist.destroy_process_group()
"""


@pytest.mark.parametrize("profile", [True, False], ids=["torch_tpu-2.8 profile", "no profile"])
def test_ddp_on_sccl_needs_host_int64_to_arrive_as_int32(profile, sd15_emulator, monkeypatch):
    """Why the 0.30 patch keeps DDP while the 0.16 one averages gradients itself: DDP's setup all-gathers
    int64 shape metadata copied from the host. torch_tpu 2.8 turns host int64 into int32 on the way in
    (the profile's int64-host-copy-becomes-int32), so sccl takes it and DDP averages the gradients; without
    that conversion (as with torch_tpu 2.1) sccl refuses the int64 all-gather."""
    python, emu = sd15_emulator
    strict = strict_env(emu)
    if profile:
        monkeypatch.setenv("SD_ENV_EMULATED_PROFILE", strict["SD_ENV_EMULATED_PROFILE"])
    else:
        monkeypatch.delenv("SD_ENV_EMULATED_PROFILE", raising=False)
    got = run_ranks(python, emu, DDP)
    if profile:  # rank r's input is r + 1 everywhere: the mean over ranks of 3 * (r + 1) is 4.5
        assert [r["grad"] for r in got] == [[[4.5] * 4] * 2] * 2, got
    else:
        assert [r["error"] for r in got] == ["ProcessGroupSCCL::allgather: int64 (torch.int64) tensors are not "
                                             "supported by the sccl backend; use int32 or float (Sophgo's sccl, "
                                             "like its device, has no int64)"] * 2, got
