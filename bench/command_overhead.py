"""Benchmark: what sd-env adds to a command, next to the target's bare interpreter.

    python bench/command_overhead.py --home HOME [--repeat 15] [--before REV]

Times, median of --repeat runs after one warm-up: the target's `python -c pass`,
`sd-env --version` (start-up alone), `sd-env run -- true` (find the target, read it once,
set the training variables, exec) and `sd-env status`. HOME is an installed sd-env home
(its venv is only read; run and status write their logs there). With --before, the same
rows for sd-env as of git revision REV too (exported to a temporary folder, put first on
PYTHONPATH).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifests" / "sc7-sd14-lora.toml"


def median_seconds(argv: list[str], repeat: int, env: dict[str, str] | None = None) -> float:
    subprocess.run(argv, check=True, capture_output=True, env=env)  # warm-up: page cache, .pyc files
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def export(rev: str, into: Path) -> dict[str, str]:
    """The environment that runs sd-env as of `rev`: its tree exported into `into`, first on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return {**os.environ, "PYTHONPATH": str(into / "installer")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--before", metavar="REV", help="also time sd-env as of this git revision")
    args = parser.parse_args()
    sd_env = [sys.executable, "-m", "sd_env"]
    where = ["--home", str(args.home), "-m", str(MANIFEST)]
    rows = [("target `python -c pass`", [str(args.home / "venv" / "bin" / "python"), "-c", "pass"]),
            ("`sd-env --version`", [*sd_env, "--version"]),
            ("`sd-env run -- true`", [*sd_env, "run", "--quiet", *where, "--", "true"]),
            ("`sd-env status`", [*sd_env, "status", *where])]
    with tempfile.TemporaryDirectory() as scratch:
        before = export(args.before, Path(scratch)) if args.before else None
        for label, argv in rows:
            now = f"{median_seconds(argv, args.repeat) * 1000:.0f} ms"
            if before is not None and "sd-env" in label:
                print(f"{label}: {median_seconds(argv, args.repeat, before) * 1000:.0f} ms at {args.before}, {now} now")
            else:
                print(f"{label}: {now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
