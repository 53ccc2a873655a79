"""Benchmark: what sd-env adds to a command, next to the target's bare interpreter.

    python bench/command_overhead.py --home HOME [--repeat 15] [--before REV]

Times, median of --repeat runs after one warm-up: bare `true` and the target's `python -c pass`,
`sd-env --version` (start-up alone), `sd-env run -q -- true` (find the target, take its inventory
from the home's cache, set the training variables, exec), the same with the notes printed (rich),
the same with the cache emptied before each run (the target interpreter is started to read it, as
after an install), and `sd-env status`. HOME is an installed sd-env home (its venv is only read;
run and status write their logs and the inventory cache there). With --before, the same rows for
sd-env as of git revision REV too (exported to a temporary folder, put first on PYTHONPATH).
sd-env runs as an installed copy does, from .pyc files: PYTHONDONTWRITEBYTECODE is dropped so the
warm-up writes them (without them, compiling its modules adds 20-30 ms to every row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifests" / "sc7-sd14-lora.toml"


# The environment of every run: .pyc files are written and used (see the docstring).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def median_seconds(argv: list[str], repeat: int, env: dict[str, str] = ENV,
                   before_each: Callable[[], None] | None = None) -> float:
    subprocess.run(argv, check=True, capture_output=True, env=env)  # warm-up: page cache, .pyc files
    times = []
    for _ in range(repeat):
        if before_each is not None:
            before_each()
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def export(rev: str, into: Path) -> dict[str, str]:
    """The environment that runs sd-env as of `rev`: its tree exported into `into`, first on PYTHONPATH."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return {**ENV, "PYTHONPATH": str(into / "installer")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--before", metavar="REV", help="also time sd-env as of this git revision")
    args = parser.parse_args()
    sd_env = [sys.executable, "-m", "sd_env"]
    where = ["--home", str(args.home), "-m", str(MANIFEST)]
    run = [*sd_env, "run", "--quiet", *where, "--", "true"]

    def cold() -> None:  # as after an install: the target interpreter is started to read the inventory
        shutil.rmtree(args.home / "cache" / "inventory", ignore_errors=True)

    rows: list[tuple[str, list[str], Callable[[], None] | None]] = [
        ("bare `true`", ["true"], None),
        ("target `python -c pass`", [str(args.home / "venv" / "bin" / "python"), "-c", "pass"], None),
        ("`sd-env --version`", [*sd_env, "--version"], None),
        ("`sd-env run -q -- true`", run, None),
        ("`sd-env run -- true` (notes printed)", [a for a in run if a != "--quiet"], None),
        ("`sd-env run -q -- true`, inventory not cached", run, cold),
        ("`sd-env status`", [*sd_env, "status", *where], None)]
    with tempfile.TemporaryDirectory() as scratch:
        before = export(args.before, Path(scratch)) if args.before else None
        for label, argv, before_each in rows:
            now = f"{median_seconds(argv, args.repeat, before_each=before_each) * 1000:.0f} ms"
            if before is not None and "sd-env" in label:
                then = median_seconds(argv, args.repeat, before, before_each) * 1000
                print(f"{label}: {then:.0f} ms at {args.before}, {now} now")
            else:
                print(f"{label}: {now}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
