#!/usr/bin/env python
"""The LoRA step on the emulated "tpu" vs the CPU, side by side in one run, for one or more homes.

    python bench/emulated_step.py --home /work/devhome [--home SD15_HOME] [--accelerate-autocast DIR]

Runs each home's patched example script (v0.20.0 on the torch 2.1 stack, v0.29.2 on
the torch 2.8 one) on sd-env's tiny model, without validation images, once per
variant with --steps steps and sd-env's precision watcher, which records what
dtype the UNet's matmuls ran in. A step's time is the median interval between
the steps the script logs to TensorBoard (the first left out), so start-up, model
loading and warm-up do not count. Variants: CPU fp32, emulated tpu fp32, emulated
tpu fp16; with --accelerate-autocast DIR (a folder holding a scratch copy of the
`accelerate` package that autocasts fp16 on "tpu"), that too. The losses are the
TensorBoard `train_loss`; the peak is the emulated device's allocator peak (its
counters, written at the run's exit); --strict runs under the era's strict
profile. The emulator is built into a scratch folder: the homes are only read.
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

from sd_env.system.paths import Paths
from sd_env.system.probe import script as probe_script
from sd_env.system.runner import Runner
from sd_env.verify import emulation, precision

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


def logged(python: Path, out: Path) -> dict:
    """The run's TensorBoard losses and the seconds between its logged steps."""
    got = subprocess.run([str(python), str(probe_script("lora_weights.py")), str(out)], capture_output=True,
                         text=True, check=True)
    return json.loads(got.stdout.splitlines()[-1])


def peak(stats: Path) -> str:
    try:
        dev = json.loads(stats.read_text().splitlines()[-1])["devices"][0]
    except (OSError, IndexError, ValueError):
        return "-"
    return f"{dev['peak_bytes'] / 2**20:.0f} MiB ({dev['peak_requested_bytes'] / 2**20:.1f} requested)"


def bench_home(home: Path, steps: int, autocast_dir: Path | None, strict: bool, scratch: Path) -> list[tuple]:
    python = home / "venv" / "bin" / "python"
    script = home / "src" / "diffusers" / EXAMPLE
    emu = emulation.build(Runner(), python, Paths(scratch / "cache"))  # the home is only read
    print(f"emulator {emu.era}: {'cached' if emu.cached else f'built in {emu.seconds:.1f} s'} ({emu.pythonpath})")
    tiny = scratch / "tiny"
    subprocess.run([str(python), str(probe_script("tiny_sd.py")), "--out", str(tiny)], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    setup = emulation.Settings(emulation.profile_path("strict", emu.era) if strict else None)
    on_tpu = emulation.environment(emu, "tpu:0", setup)
    variants = [("cpu", "fp32", "no", {}), ("tpu (emulated)", "fp32", "no", on_tpu),
                ("tpu (emulated)", "fp16", "fp16", on_tpu)]
    if autocast_dir:
        autocast = {**on_tpu, "PYTHONPATH": os.pathsep.join([str(autocast_dir), on_tpu["PYTHONPATH"]])}
        variants.append(("tpu (emulated), accelerate autocasts on tpu", "fp16", "fp16", autocast))
    rows = []
    for device, label, mixed, env in variants:
        n = len(rows)
        watch, stats = scratch / f"{n}.jsonl", scratch / f"stats-{n}.jsonl"
        watched = {**env, precision.ENV_OUT: str(watch), "SD_ENV_EMULATOR_STATS": str(stats),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(precision.watcher_dir()), env.get("PYTHONPATH")]))}
        out = scratch / f"out-{n}"
        wall = run_script(python, script, tiny, out, steps, mixed, watched)
        seen, run = precision.read(watch), logged(python, out)
        step = statistics.median(run["step_seconds"][1:])  # the first step carries warm-up
        rows.append((emu.era, device, label, step, run["losses"], peak(stats), precision.summary(mixed, seen)))
        print(f"torch_tpu {emu.era} {device} {label}: {step:.3f} s/step (median of {len(run['step_seconds']) - 1}; "
              f"{wall:.1f} s in all)", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, action="append", required=True,
                    help="an sd-env home with diffusers from git (repeat for each era)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--strict", action="store_true", help="the emulated runs under the era's strict profile")
    ap.add_argument("--accelerate-autocast", type=Path, help="folder holding a scratch accelerate package")
    args = ap.parse_args()
    table = []
    for i, home in enumerate(args.home):
        scratch = Path(tempfile.mkdtemp(prefix=f"sd-env-bench-emu-{i}-"))
        rows = bench_home(home, args.steps, args.accelerate_autocast, args.strict, scratch)
        cpu = rows[0][3]
        for era, device, label, step, loss, top, said in rows:
            shown = ", ".join(f"{x:.4f}" for x in loss[:4])
            table.append(f"| torch_tpu {era} | {device} | {label} | {step:.3f} | {step / cpu:.2f}x | {shown} | "
                         f"{top if device != 'cpu' else '-'} | {said} |")
    print("\n| era | device | precision | s/step | vs CPU | losses (first 4) | peak tpu memory | what ran |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
