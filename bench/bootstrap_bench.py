"""Benchmark: cold and warm ./bootstrap.sh against the tutorial's manual procedure.

Prints wall time, bytes received over the network (from /proc/net/dev, all
interfaces but loopback) and the size of the resulting environment.

  python bench/bootstrap_bench.py [--skip-manual] [--keep]

Cold means empty pip and uv caches and a new home; warm re-runs bootstrap on
the finished home. The manual procedure is the tutorial's, as far as it can
run on a machine without GitHub: unpinned `pip install` of torch 2.1.0 and of
the example requirements, then the three libraries from their PyPI sdists in
develop mode (the tutorial clones them from GitHub); finally `import
diffusers`, which shows whether the result works at all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY39 = None


def rx_bytes() -> int:
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, data = line.split(":", 1)
        if name.strip() != "lo":
            total += int(data.split()[0])
    return total


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 else 0


def timed(label: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, int, int]:
    before, started = rx_bytes(), time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds, received = time.monotonic() - started, rx_bytes() - before
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    print(f"  {label}: {seconds:.1f} s, {received / 1e9:.2f} GB received ({status})", file=sys.stderr)
    if proc.returncode != 0:
        print("    " + "\n    ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:]), file=sys.stderr)
    return seconds, received, proc.returncode


def find_py39() -> str:
    sys.path.insert(0, str(ROOT / "installer"))
    from sd_env.target.envs import find_base

    found = find_base("3.9")
    if found is None:
        sys.exit("no Python 3.9 found")
    return str(found)


def bench_bootstrap(scratch: Path, env: dict[str, str]) -> list[tuple[str, float, int, int]]:
    home = scratch / "home"
    env = {**env, "SD_ENV_HOME": str(home)}
    cold = timed("bootstrap, cold", [str(ROOT / "bootstrap.sh")], env)
    warm = timed("bootstrap, warm", [str(ROOT / "bootstrap.sh")], env)
    size = du(home / "venv")
    return [("sd-env ./bootstrap.sh (cold caches)", cold[0], cold[1], size),
            ("sd-env ./bootstrap.sh (re-run)", warm[0], warm[1], size)]


def bench_manual(scratch: Path, env: dict[str, str]) -> tuple[str, float, int, int, str]:
    venv = scratch / "manual"
    py = find_py39()
    steps = [
        ["venv", [py, "-m", "venv", str(venv)]],
        # The tutorial: torch from the CPU index (unreachable here: PyPI's CUDA build instead).
        ["torch", [str(venv / "bin/pip"), "install", "torch==2.1.0", "torchvision==0.16.0", "torchaudio==2.1.0"]],
        ["examples' requirements (unpinned)", [str(venv / "bin/pip"), "install", "accelerate>=0.16.0",
                                               "torchvision", "transformers>=4.25.1", "datasets", "ftfy",
                                               "tensorboard", "Jinja2"]],
    ]
    total_s, total_b = 0.0, 0
    for label, argv in steps:
        s, b, _ = timed(f"manual: {label}", argv, env)
        total_s, total_b = total_s + s, total_b + b
    for name, version in (("accelerate", "0.16.0"), ("diffusers", "0.20.0"), ("transformers", "4.29.1")):
        dl = scratch / "sdists"
        s, b, _ = timed(f"manual: {name} sdist", [str(venv / "bin/pip"), "download", "--no-deps", "--no-binary",
                                                  ":all:", "-d", str(dl), f"{name}=={version}"], env)
        archive = next(dl.glob(f"{name}-{version}.tar.gz"))
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(dl)], check=True)
        s2, b2, _ = timed(f"manual: {name} setup.py develop", [str(venv / "bin/python"), "setup.py", "develop",
                                                               "--no-deps"], env, cwd=dl / f"{name}-{version}")
        total_s, total_b = total_s + s + s2, total_b + b + b2
    works = subprocess.run([str(venv / "bin/python"), "-c", "import diffusers, torch; torch.zeros(1).numpy()"],
                           capture_output=True, text=True)
    verdict = "works" if works.returncode == 0 else "BROKEN: " + (works.stderr.strip().splitlines() or ["?"])[-1]
    return "tutorial by hand (unpinned pip, sdists, setup.py develop)", total_s, total_b, du(venv), verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-manual", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sd-env-bench-"))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON")}
    env.update(UV_CACHE_DIR=str(scratch / "uv-cache"), PIP_CACHE_DIR=str(scratch / "pip-cache"))
    try:
        rows = [(*row, "works") for row in bench_bootstrap(scratch, env)]
        if not args.skip_manual:
            rows.append(bench_manual(scratch, env))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print("| procedure | wall time | received | environment | result |")
    print("| --- | --- | --- | --- | --- |")
    for label, seconds, received, size, verdict in rows:
        print(f"| {label} | {seconds:.1f} s | {received / 1e9:.2f} GB | {size / 1e9:.2f} GB | {verdict} |")
    if len(rows) == 3:
        print(f"\ncold bootstrap vs manual: {rows[0][1] / rows[2][1]:.2f}x the time, "
              f"{rows[0][2] / max(rows[2][2], 1):.2f}x the bytes")


if __name__ == "__main__":
    main()
