"""Data-parallel LoRA on 2 emulated tpu devices: patches/accelerate-0.16.0-tpu-multi.diff proven.

The real accelerate v0.16.0 (from the shared git mirror, at the manifest's commit) with the tutorial's
patch and the multi-device one; the real patched v0.20.0 example script; accelerate's own launcher
(`accelerate launch --multi_gpu --num_processes 2`), one process per emulated device, gradients
averaged through the emulated "sccl" backend. tests/kit/same_draws makes every sample of a step draw the
same random numbers (see its docstring), so that 2 processes x 1 sample and 1 process x 2 samples
can be compared: after 4 steps both ranks hold identical LoRA weights, equal in fp32 to the single
process's; in fp16 an inf on one rank makes both skip the step and halve the scale. Without the
multi-device patch the run fails at accelerate's CUDA-only process group.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sd_env.core.manifest import load
from sd_env.verify import emulation
from tests.conftest import ROOT, shared_mirrors
from tests.emulator.test_emulator_sccl import free_port

pytestmark = pytest.mark.slow

SAME_DRAWS = ROOT / "tests" / "kit" / "same_draws"
PATCHES = [ROOT / "patches" / "accelerate-0.16.0-tpu.diff", ROOT / "patches" / "accelerate-0.16.0-tpu-multi.diff"]
NO_NCCL = ("ProcessGroupNCCL is only supported with GPUs", "Distributed package doesn't have NCCL built in")


@pytest.fixture(scope="module")
def accelerates(tmp_path_factory) -> dict[str, Path]:
    """accelerate v0.16.0's src/ with the tutorial's patch ("single") and with the multi-device one too."""
    mirrors = shared_mirrors()
    if mirrors is None:
        pytest.skip("skipped: no shared/mirrors beside the repository (accelerate v0.16.0's git history)")
    commit = load(ROOT / "manifests" / "sc7-sd14-lora.toml").component("accelerate").commit
    return patched_copies(tmp_path_factory, ["--git-dir", str(mirrors / "huggingface" / "accelerate.git")], commit,
                          PATCHES)


def patched_copies(tmp_path_factory, git: list[str], tree: str, series: list[Path]) -> dict[str, Path]:
    """`git GIT archive TREE src` twice: with the stack's patch ("single", series[:1]) and the whole series."""
    out = {}
    for name, patches in (("single", series[:1]), ("multi", series)):
        where = tmp_path_factory.mktemp(f"accelerate-{name}")
        archive = subprocess.run(["git", *git, "archive", tree, "src"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
        for patch in patches:
            subprocess.run(["git", "apply", str(patch)], cwd=where, check=True, capture_output=True,
                           env={**os.environ, "GIT_CEILING_DIRECTORIES": str(where.parent)})
        out[name] = where / "src"
    return out


@pytest.fixture(scope="module")
def two_samples(tiny: Path, tmp_path_factory) -> Path:
    """The first 2 images of the tiny data set: every step of a 2-sample global batch sees both."""
    where = tmp_path_factory.mktemp("two-samples")
    lines = (tiny / "data" / "metadata.jsonl").read_text().splitlines()[:2]
    (where / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = line.split('"file_name": "')[1].split('"')[0]
        shutil.copy(tiny / "data" / name, where / name)
    return where


def launch(python: Path, emu: emulation.Emulator, accelerate_src: Path, script: Path, tiny: Path,
           data: Path, out: Path, processes: int, mixed: str = "no", **extra: str) -> subprocess.CompletedProcess:
    """accelerate's launcher, as a user runs it: 2 samples per step, split over `processes` devices."""
    out.mkdir(parents=True)
    env = {**os.environ, **emulation.environment(emu), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(out / "hf-home"), "SG_MAX_DEVICE_COUNT": "2", "SD_ENV_TEST_WEIGHTS": str(out), **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(SAME_DRAWS), env["PYTHONPATH"], str(accelerate_src)])
    how = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    argv = [str(python), "-m", "accelerate.commands.launch", *how, "--num_machines", "1", "--mixed_precision", mixed,
            "--dynamo_backend", "no", "--main_process_port", str(free_port()), str(script),
            "--pretrained_model_name_or_path", str(tiny / "model"), "--train_data_dir", str(data),
            "--resolution", "32", "--center_crop", "--train_batch_size", str(2 // processes), "--max_train_steps", "4",
            "--seed", "0", "--num_validation_images", "0", "--dataloader_num_workers", "0", "--mixed_precision", mixed,
            "--output_dir", str(out)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)


COMPARE = """
import json, sys, torch
single, r0, r1 = (torch.load(p) for p in sys.argv[1:4])
flat = lambda ts: torch.cat([t.flatten() for t in ts])
a, b, c = flat(single), flat(r0), flat(r1)
print(json.dumps({"tensors": [len(single), len(r0), len(r1)], "ranks_equal": torch.equal(b, c),
                  "relative": ((a - b).norm() / a.norm()).item(), "largest": (a - b).abs().max().item()}))
"""


def test_two_devices_train_like_one_process_over_both_samples(emulated_target, accelerates, scripts, tiny,
                                                               two_samples, tmp_path):
    python, emu = emulated_target
    two = launch(python, emu, accelerates["multi"], scripts["patched"], tiny, two_samples, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-4000:]
    assert "Distributed environment: MULTI_GPU  Backend: sccl" in two.stderr
    assert "Device: tpu:1" in two.stderr and "Device: tpu:0" in two.stderr  # one device per process
    assert "Total train batch size (w. parallel, distributed & accumulation) = 2" in two.stderr
    one = launch(python, emu, accelerates["multi"], scripts["patched"], tiny, two_samples, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-4000:]
    assert (tmp_path / "two" / "pytorch_lora_weights.safetensors").is_file()  # rank 0 saved the LoRA
    got = subprocess.run([str(python), "-c", COMPARE, str(tmp_path / "one" / "rank0.pt"),
                          str(tmp_path / "two" / "rank0.pt"), str(tmp_path / "two" / "rank1.pt")],
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-3000:]
    seen = json.loads(got.stdout.splitlines()[-1])
    assert seen["tensors"] == [64, 64, 64], seen  # the 64 rank-4 LoRA tensors the optimizer stepped
    assert seen["ranks_equal"], seen  # both ranks hold the same weights, each having seen another sample
    assert seen["relative"] < 1e-6, seen  # = one process over both samples (fp32; measured 1.3e-8)


def test_unpatched_accelerate_cannot_start_on_two_tpu_devices(emulated_target, accelerates, scripts, tiny,
                                                              two_samples, tmp_path):
    """accelerate 0.16.0 with only the tutorial's patch takes the CUDA path: NCCL and torch.cuda.set_device.
    Its launcher also swallows the failure (exit 0 without --debug), which the multi-device patch fixes."""
    python, emu = emulated_target
    got = launch(python, emu, accelerates["single"], scripts["patched"], tiny, two_samples, tmp_path / "two", 2)
    assert any(e in got.stderr for e in NO_NCCL), got.stderr[-4000:]
    assert got.returncode == 0  # accelerate 0.16.0's launcher: the failure is only in the output
    assert not (tmp_path / "two" / "pytorch_lora_weights.safetensors").exists()


def test_fp16_inf_on_one_rank_skips_the_step_on_both(emulated_target, accelerates, scripts, tiny,
                                                     two_samples, tmp_path):
    """fp16: the second loss of rank 1 is made inf; the averaged gradients carry it to rank 0, so both
    processes' scalers skip step 2 and halve the scale, and the ranks stay identical."""
    python, emu = emulated_target
    got = launch(python, emu, accelerates["multi"], scripts["patched"], tiny, two_samples, tmp_path / "run", 2, "fp16",
                 SD_ENV_TEST_INF_AT="1:2")
    assert got.returncode == 0, got.stderr[-4000:]
    steps = [json.loads((tmp_path / "run" / f"steps{rank}.json").read_text()) for rank in (0, 1)]
    assert steps[0] == steps[1], steps  # the same decision on both ranks
    assert [s["skipped"] for s in steps[0]] == [False, True, False, False], steps
    assert steps[0][1]["scale"] == steps[0][0]["scale"] / 2, steps
