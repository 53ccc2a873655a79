#!/usr/bin/env python
"""The LoRA step on the emulated "tpu" vs the CPU, side by side in one run.

    python bench/emulated_step.py --home /work/devhome [--accelerate-autocast DIR]

Runs the home's patched v0.20.0 example script on sd-env's tiny model, without
validation images, once per variant with --steps steps and sd-env's precision
watcher, which records what dtype the UNet's matmuls ran in and when each
training forward began: a step's time is the median from one to the next, so
start-up and model loading do not count. Variants: CPU fp32, emulated tpu fp32,
emulated tpu fp16; with --accelerate-autocast DIR (a folder holding a scratch
copy of the `accelerate` package that autocasts fp16 on "tpu"), that too. The
losses are the TensorBoard `train_loss`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sd_env import emulation, precision
from sd_env.paths import Paths
from sd_env.probe import script as probe_script
from sd_env.runner import Runner

EXAMPLE = Path("examples") / "text_to_image" / "train_text_to_image_lora.py"


def run_script(python: Path, script: Path, tiny: Path, out: Path, steps: int, mixed: str, env: dict[str, str]) -> float:
    argv = [str(python), str(script), "--pretrained_model_name_or_path", str(tiny / "model"), "--train_data_dir",
            str(tiny / "data"), "--resolution", "32", "--center_crop", "--train_batch_size", "1", "--max_train_steps",
            str(steps), "--seed", "0", "--num_validation_images", "0", "--dataloader_num_workers", "0",
            "--mixed_precision", mixed, "--output_dir", str(out)]
    started = time.monotonic()
    got = subprocess.run(argv, env={**os.environ, **env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - started
    if got.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{got.stderr[-3000:]}")
    return seconds


def losses(python: Path, out: Path) -> list[float]:
    got = subprocess.run([str(python), str(probe_script("lora_weights.py")), str(out)], capture_output=True,
                         text=True, check=True)
    return json.loads(got.stdout.splitlines()[-1])["losses"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True, help="an sd-env home with diffusers from git")
    ap.add_argument("--python", type=Path, help="default: HOME/venv/bin/python")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--accelerate-autocast", type=Path, help="folder holding a scratch accelerate package")
    args = ap.parse_args()
    python = args.python or args.home / "venv" / "bin" / "python"
    script = args.home / "src" / "diffusers" / EXAMPLE
    scratch = Path(tempfile.mkdtemp(prefix="sd-env-bench-emu-"))
    emu = emulation.build(Runner(), python, Paths(args.home))
    print(f"emulator: {'cached' if emu.cached else f'built in {emu.seconds:.1f} s'} ({emu.pythonpath})")
    tiny = scratch / "tiny"
    subprocess.run([str(python), str(probe_script("tiny_sd.py")), "--out", str(tiny)], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    on_tpu = emulation.environment(emu)
    variants = [("cpu", "fp32", "no", {}), ("tpu (emulated)", "fp32", "no", on_tpu),
                ("tpu (emulated)", "fp16", "fp16", on_tpu)]
    if args.accelerate_autocast:
        autocast = {**on_tpu, "PYTHONPATH": os.pathsep.join([str(args.accelerate_autocast), on_tpu["PYTHONPATH"]])}
        variants.append(("tpu (emulated), accelerate autocasts on tpu", "fp16", "fp16", autocast))
    rows = []
    for device, label, mixed, env in variants:
        watch = scratch / f"{len(rows)}.jsonl"
        watched = {**env, precision.ENV_OUT: str(watch),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(precision.watcher_dir()), env.get("PYTHONPATH")]))}
        out = scratch / f"out-{len(rows)}"
        wall = run_script(python, script, tiny, out, args.steps, mixed, watched)
        seen = precision.read(watch)
        step = statistics.median(seen.step_seconds)
        rows.append((device, label, step, losses(python, out), precision.summary(mixed, seen)))
        print(f"{device} {label}: {step:.3f} s/step (median of {len(seen.step_seconds)}; {wall:.1f} s in all)",
              flush=True)
    cpu = rows[0][2]
    print("\n| device | precision | s/step | vs CPU | losses | what ran |\n| --- | --- | --- | --- | --- | --- |")
    for device, label, step, loss, said in rows:
        shown = ", ".join(f"{x:.4f}" for x in loss)
        print(f"| {device} | {label} | {step:.3f} | {step / cpu:.2f}x | {shown} | {said} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
