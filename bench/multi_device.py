#!/usr/bin/env python
"""Data-parallel LoRA on emulated tpu devices: seconds per step with 1 and 2 devices, and the bytes
all-reduced per step for SD 1.4's rank-4 LoRA.

    OMP_NUM_THREADS=1 python bench/multi_device.py --home MULTI_HOME [--steps 8] [--emulator-home DIR]

MULTI_HOME is a home installed from the sc7-sd14-lora-multi stack (its accelerate has
accelerate-0.16.0-tpu-multi.diff; it is only read). The home's patched example script trains sd-env's
tiny model through accelerate's own launcher, 1 batch of 1 sample per device and step, with 1 process
on tpu:0 and then 2 processes on tpu:0 and tpu:1 (gradients averaged through the emulated "sccl"
backend). A step's time is the median interval between the steps rank 0 logs to TensorBoard (the first
left out). CPU EMULATION, NOT THE CARD: each emulated device is this host's CPU, so the figures say what
the processes and the all-reduce cost here, not a card's speed-up.

The bytes: the LoRA layers the script adds (its own rule: one LoRAAttnProcessor per attention processor
of the UNet, rank 4) on SD 1.4's UNet configuration, built on the meta device (no weights, no download);
the patch all-reduces every trained gradient once per step, in fp32 (the LoRA stays fp32 under fp16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sd_env.system.paths import Paths
from sd_env.system.probe import script as probe_script
from sd_env.system.runner import Runner
from sd_env.target import multidevice
from sd_env.verify import emulation

EXAMPLE = Path("examples") / "text_to_image" / "train_text_to_image_lora.py"

# SD 1.4's UNet configuration (CompVis/stable-diffusion-v1-4 unet/config.json, as probes/sd14_arch.py builds it).
LORA_PARAMETERS = """
import json
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import LoRAAttnProcessor
with init_empty_weights():
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
counts = []
for name in unet.attn_processors:  # train_text_to_image_lora.py v0.20.0's loop
    cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
    if name.startswith("mid_block"):
        hidden = unet.config.block_out_channels[-1]
    elif name.startswith("up_blocks"):
        hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
    else:
        hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
    proc = LoRAAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, rank=4)
    counts.append(sum(p.numel() for p in proc.parameters()))
print(json.dumps({"processors": len(counts), "tensors": 8 * len(counts), "parameters": sum(counts)}))
"""


def run(python: Path, script: Path, tiny: Path, out: Path, processes: int, steps: int,
        env: dict[str, str]) -> list[float]:
    """The seconds between rank 0's logged steps, with `processes` processes (one per device)."""
    how = ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    argv = [str(python), "-m", "accelerate.commands.launch", *how, "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(multidevice.free_port()), str(script),
            "--pretrained_model_name_or_path", str(tiny / "model"), "--train_data_dir", str(tiny / "data"),
            "--resolution", "32", "--center_crop", "--train_batch_size", "1", "--max_train_steps", str(steps),
            "--seed", "0", "--num_validation_images", "0", "--dataloader_num_workers", "0", "--mixed_precision", "no",
            "--output_dir", str(out)]
    got = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if got.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{got.stderr[-3000:]}")
    logged = subprocess.run([str(python), str(probe_script("lora_weights.py")), str(out)], capture_output=True,
                            text=True, check=True)
    return json.loads(logged.stdout.splitlines()[-1])["step_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a home of the sc7-sd14-lora-multi stack (read only)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--emulator-home", type=Path, help="where the emulator build is cached (default: scratch)")
    args = parser.parse_args()
    python = args.home / "venv" / "bin" / "python"
    found, applied = multidevice.applied_multi_patch(Paths(args.home))
    if found is None:
        sys.exit(f"{args.home}: its accelerate lacks the multi-device patch (applied: {applied}); install "
                 "-m sc7-sd14-lora-multi there")
    with tempfile.TemporaryDirectory(prefix="multi-device-bench-") as scratch:
        work = Path(scratch)
        emu = emulation.build(Runner(), python, Paths(args.emulator_home or work / "emulator-home"))
        print(f"emulator {emu.era}: {'cached' if emu.cached else f'built in {emu.seconds:.1f} s'}")
        subprocess.run([str(python), str(probe_script("tiny_sd.py")), "--out", str(work / "tiny")], check=True,
                       capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        env = {**os.environ, **emulation.environment(emu), "SG_MAX_DEVICE_COUNT": "2", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        print(f"CPU emulation, not the card: tiny model, 32 px, 1 sample per device and step, {args.steps} steps, "
              f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}, {os.cpu_count()} cores")
        rows = {}
        for processes in (1, 2):
            seconds = run(python, args.home / "src" / "diffusers" / EXAMPLE, work / "tiny", work / f"out{processes}",
                          processes, args.steps, env)
            step = statistics.median(seconds[1:])  # the first interval carries warm-up
            rows[processes] = step
            print(f"{processes} device(s): {step:.3f} s/step (median of {len(seconds) - 1}), global batch "
                  f"{processes}, {processes / step:.1f} samples/s (emulated)")
        print(f"2 vs 1 device: {rows[2] / rows[1]:.2f}x the step time for 2x the samples (emulated)")
    got = subprocess.run([str(python), "-c", LORA_PARAMETERS], capture_output=True, text=True, check=True)
    lora = json.loads(got.stdout.splitlines()[-1])
    print(f"SD 1.4 rank-4 LoRA: {lora['processors']} attention processors, {lora['tensors']} tensors, "
          f"{lora['parameters']:,} fp32 gradients = {4 * lora['parameters']:,} bytes all-reduced per step "
          "(one flat all-reduce; a ring all-reduce over N devices sends 2(N-1)/N of it per device)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
