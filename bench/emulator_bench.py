"""The tpu emulator's cost: clean build, cached build, and a LoRA step on "tpu" vs the CPU.

    python bench/emulator_bench.py [--python TARGET_PYTHON] [--steps N]

TARGET_PYTHON is a torch 2.1 environment (default $SD_ENV_PYTHON, else
/work/devhome/venv/bin/python). The clean build goes to a temporary home;
the step timing runs the tiny UNet LoRA step of tests/emulator_cases.py on
the CPU and on "tpu" side by side in one process, with 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from sd_env import emulation
from sd_env.paths import Paths
from sd_env.runner import Runner

CASES = Path(__file__).resolve().parents[1] / "tests" / "emulator_cases.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path,
                        default=Path(os.environ.get("SD_ENV_PYTHON", "/work/devhome/venv/bin/python")))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emulator-bench-") as home:
        paths = Paths(Path(home))
        clean = emulation.build(Runner(), args.python, paths)
        cached = emulation.build(Runner(), args.python, paths)
        print(f"clean build:  {clean.seconds:6.1f} s  ({clean.key})")
        print(f"cached build: {cached.seconds:6.1f} s  (cached={cached.cached}: the check of the target's torch only)")
        for threads in (1, 2):
            out = subprocess.run([str(args.python), str(CASES), "--bench", str(args.steps), str(threads)],
                                 env={**os.environ, **emulation.environment(clean)}, check=True,
                                 capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            print(f"LoRA step, {threads} thread(s): cpu {got['cpu']:.3f} s, tpu (emulated) {got['tpu']:.3f} s, "
                  f"slowdown {got['slowdown']:.2f}x")


if __name__ == "__main__":
    main()
