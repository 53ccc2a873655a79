"""The tpu emulator's cost per era: clean build, cached build, and a LoRA step on "tpu" vs the CPU.

    python bench/emulator_bench.py [--python TARGET_PYTHON ...] [--steps N]

Each TARGET_PYTHON is a torch 2.1 or torch 2.8 environment (repeat --python for
both eras; default $SD_ENV_PYTHON, else /work/devhome/venv/bin/python). The clean
build goes to a temporary home; the step timing runs the tiny UNet LoRA step of
tests/kit/emulator_cases.py on the CPU and on "tpu" side by side in one process, with
1 and 2 threads. The load average is printed with each figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import emulation

CASES = Path(__file__).resolve().parents[1] / "tests" / "kit" / "emulator_cases.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, action="append",
                        help="a target interpreter (repeat for each era)")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    for python in args.python or [Path(os.environ.get("SD_ENV_PYTHON", "/work/devhome/venv/bin/python"))]:
        bench(python, args.steps)


def bench(python: Path, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="emulator-bench-") as home:
        paths = Paths(Path(home))
        clean = emulation.build(Runner(), python, paths)
        load = os.getloadavg()[0]
        cached = emulation.build(Runner(), python, paths)
        print(f"torch_tpu {clean.era}: clean build {clean.seconds:6.1f} s ({clean.key}; load {load:.1f})")
        print(f"torch_tpu {clean.era}: cached build {cached.seconds:6.1f} s (cached={cached.cached}: the check of the "
              "target's torch only)")
        for threads in (1, 2):
            out = subprocess.run([str(python), str(CASES), "--bench", str(steps), str(threads)],
                                 env={**os.environ, **emulation.environment(clean)}, check=True,
                                 capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            print(f"torch_tpu {clean.era}: LoRA step, {threads} thread(s): cpu {got['cpu']:.3f} s, tpu (emulated) "
                  f"{got['tpu']:.3f} s, slowdown {got['slowdown']:.2f}x (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
