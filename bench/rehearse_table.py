#!/usr/bin/env python
"""Peak "tpu" memory of SD 1.4's full network against resolution and batch: `sd-env rehearse` per cell.

    python bench/rehearse_table.py --home HOME --model DIR [--resolution 256 384 512] [--batch 1 2]
                                   [--mixed-precision both] [--out DIR]

HOME is a home with the target environment (venv/, src/, state.json) whose emulator cache
it may fill; DIR a model `sd-env rehearse --keep-model` kept (so the 4 GiB are built once).
Each cell is one `sd-env rehearse --json` run (2 steps per precision, no capacity limit
beyond its 16G default); the table prints the overall peak, the steps' peak, seconds per
step after the first and the host RAM peak: the emulation's figures on this CPU, not the
card's. A cell that cannot run prints its error. Mind the host: fp32 at 512 needs more
RAM than the device peak (the emulated device lives in host memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GIB = 2**30


def cell(home: Path, model: Path, resolution: int, batch: int, mixed: str, out: Path) -> dict:
    argv = [sys.executable, "-m", "sd_env", "rehearse", "--json", "--home", str(home), "--python",
            str(home / "venv"), "--model", str(model), "--resolution", str(resolution), "--batch", str(batch),
            "--mixed-precision", mixed, "--output", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True)
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no output", "runs": []}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--resolution", type=int, nargs="+", default=[256, 384, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mixed-precision", default="both", choices=("no", "fp16", "both"))
    parser.add_argument("--out", type=Path, help="where the runs write (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rehearse-table-") as scratch:
        out = args.out or Path(scratch)
        print("resolution | batch | precision | peak tpu GiB | steps' peak GiB | s/step | host RAM GiB | verdict")
        for resolution in args.resolution:
            for batch in args.batch:
                doc = cell(args.home, args.model, resolution, batch, args.mixed_precision,
                           out / f"{resolution}-b{batch}")
                if doc.get("error") and not doc.get("runs"):
                    print(f"{resolution} | {batch} | - | - | - | - | - | error: {doc['error']}", flush=True)
                for r in doc.get("runs", []):
                    steps = ", ".join(f"{s:.1f}" for s in r["step_seconds"]) or "-"
                    print(f"{resolution} | {batch} | {r['precision']} | {r['peak_bytes'] / GIB:.2f} | "
                          f"{(r['steps_peak_bytes'] or 0) / GIB:.2f} | {steps} | "
                          f"{r['host_peak_rss_bytes'] / GIB:.2f} | {r['verdict']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
