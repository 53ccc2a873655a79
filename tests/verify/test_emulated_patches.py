"""Each patch's proof on the emulated "tpu" device, against the real upstream code.

The diffusers patch: the unpatched v0.20.0 example script (read from the shared
git mirror at the pinned commit) trains nothing on "tpu" in fp32 (exit 0, LoRA
weights untouched) and fails in fp16; the patched one trains 2 steps in both. The accelerate patch's proof
is in test_real_accelerate.py; `sd-env repatch`'s use of it is tested here.
Expensive things are shared: one emulator build (the `emulator` fixture), one
tiny model, one copy of the script.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sd_env.system.paths import Paths
from sd_env.system.probe import script as probe_script
from sd_env.system.runner import Runner
from sd_env.verify import emulation, precision, proof

SAME_DEVICE = "Expected all tensors to be on the same device"  # what the issue expected; not what happens


def train(python: Path, emu: emulation.Emulator, script: Path, tiny: Path, out: Path, mixed: str,
          watch: Path | None = None) -> subprocess.CompletedProcess:
    """The script as the tutorial runs it (ACCELERATE_TORCH_DEVICE=tpu:0), 2 steps on the tiny model."""
    env = {**os.environ, **emulation.environment(emu), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if watch is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(precision.watcher_dir()), env["PYTHONPATH"]])
        env[precision.ENV_OUT] = str(watch)
    argv = [str(python), str(script), "--pretrained_model_name_or_path", str(tiny / "model"),
            "--train_data_dir", str(tiny / "data"), "--resolution", "32", "--center_crop", "--train_batch_size", "1",
            "--max_train_steps", "2", "--seed", "0", "--num_validation_images", "0", "--dataloader_num_workers", "0",
            "--mixed_precision", mixed, "--output_dir", str(out)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)


def trained_weights(python: Path, out: Path) -> dict:
    got = subprocess.run([str(python), str(probe_script("lora_weights.py")), str(out)], capture_output=True,
                         text=True, timeout=300)
    return json.loads(got.stdout.splitlines()[-1])


@pytest.mark.slow
def test_unpatched_example_script_trains_nothing_on_tpu(emulated_target, scripts, tiny, tmp_path):
    """Without `.to(accelerator.device)` the optimizer is built on the CPU copies of the LoRA weights:
    accelerator.prepare's `module.to("tpu")` replaces a parameter by a new one when the device is a
    PrivateUse1 one (torch 2.1 swaps `.data` only between CPU/CUDA-like tensors), so the optimizer
    steps parameters without gradients. fp32 exits 0 having trained nothing; fp16's scaler notices."""
    python, emu = emulated_target
    got = train(python, emu, scripts["unpatched"], tiny, tmp_path / "fp32", "no", tmp_path / "watch.jsonl")
    assert got.returncode == 0, got.stderr[-3000:]
    weights = trained_weights(python, tmp_path / "fp32")
    assert weights["tensors"] == 64 and weights["up_max"] == 0.0, weights  # written, never trained
    seen = precision.read(tmp_path / "watch.jsonl")  # the watcher sees why: the optimizer holds the CPU copies
    assert (seen.trained_devices, seen.loss_devices) == ({"cpu"}, {"tpu:0"}), seen.as_dict()
    got = train(python, emu, scripts["unpatched"], tiny, tmp_path / "fp16", "fp16")
    assert got.returncode != 0 and "No inf checks were recorded for this optimizer" in got.stderr, got.stderr[-3000:]
    assert SAME_DEVICE not in got.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mixed", ["no", "fp16"])
def test_patched_example_script_trains_two_steps_on_tpu(emulated_target, scripts, tiny, tmp_path, mixed):
    python, emu = emulated_target
    watch = tmp_path / "precision.jsonl"
    got = train(python, emu, scripts["patched"], tiny, tmp_path / "out", mixed, watch)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "Steps: 100%" in got.stderr and "2/2" in got.stderr
    weights = trained_weights(python, tmp_path / "out")
    assert weights["tensors"] == 64 and weights["finite"] and weights["up_max"] > 0, weights  # it trained
    seen = precision.read(watch)
    assert seen.devices == {"tpu"}, seen.as_dict()  # the UNet ran on the emulated device, not the CPU
    assert seen.dtypes("lora") == ["float32"]  # the trained LoRA layers stay in fp32 (the script's choice)
    assert seen.backward_calls == 2
    assert seen.trained_devices == seen.loss_devices == {"tpu:0"}  # where the training really ran
    if mixed == "fp16":
        assert seen.dtypes("base") == ["float16"] and seen.scaler and seen.scaler.startswith("torch_tpu.tpu.amp")
    else:
        assert seen.dtypes("base") == ["float32"] and seen.scaler is None


@pytest.mark.slow
def test_repatch_proof_of_the_accelerate_patch(emulator_target, emulator):
    python, paths = emulator_target  # the same home: the emulator comes from its cache
    (row,) = proof.after_port(Runner(), python, paths, "accelerate")
    assert row.status == "ok" and row.detail.startswith("ported and proven (emulated)"), row


def test_repatch_proof_is_skipped_without_the_emulation(target_python, tmp_path):
    # The tests' own venv has no torch: the emulation cannot be built, and the row says so.
    (row,) = proof.after_port(Runner(), target_python, Paths(tmp_path / "home"), "accelerate")
    assert row.status == "skipped" and "ported, not proven" in row.detail, row
    assert proof.after_port(Runner(), target_python, Paths(tmp_path / "home"), "transformers") == []


def test_precision_summary_reads_the_watcher_lines(tmp_path):
    lines = [{"counts": {"train|base|addmm|float16|tpu": 52, "train|lora|mm|float32|tpu": 128,
                         "infer|base|mm|float16|tpu": 9}, "autocast": ["cuda=False,cpu=False,tpu=False"],
              "backward_calls": 2, "scaler": "torch_tpu.tpu.amp.GradScaler", "scale": 65536.0}]
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = precision.read(tmp_path / "w.jsonl")
    assert precision.summary("fp16", got) == (
        "fp16 requested; UNet forward: frozen layers ran in fp16 (52 ops), LoRA layers in fp32 (128 ops); "
        "autocast off; loss scaling on (torch_tpu.tpu.amp.GradScaler, scale 65536)")
    assert "not measured" in precision.summary("no", precision.read(tmp_path / "missing.jsonl"))
