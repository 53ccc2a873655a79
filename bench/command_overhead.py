"""Benchmark: what sd-env adds to a command, next to the target's bare interpreter.

    python bench/command_overhead.py --home HOME [--repeat 15]

Times, median of --repeat runs after one warm-up: the target's `python -c pass`,
`sd-env run -- true` (find the target, read it once, set the training variables,
exec) and `sd-env status`. HOME is an installed sd-env home (its venv is only read).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifests" / "sc7-sd14-lora.toml"


def median_seconds(argv: list[str], repeat: int) -> float:
    subprocess.run(argv, check=True, capture_output=True)  # warm-up: page cache, .pyc files
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    sd_env = [sys.executable, "-m", "sd_env"]
    where = ["--home", str(args.home), "-m", str(MANIFEST)]
    rows = [("target `python -c pass`", [str(args.home / "venv" / "bin" / "python"), "-c", "pass"]),
            ("`sd-env run -- true`", [*sd_env, "run", "--quiet", *where, "--", "true"]),
            ("`sd-env status`", [*sd_env, "status", *where])]
    for label, argv in rows:
        print(f"{label}: {median_seconds(argv, args.repeat) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
