"""How long verify and a warm bootstrap take next to what they cannot beat: importing torch.

Issue 13's targets, measured side by side in one run against one environment:

    verify --quick      <= 1.5 x  python -c "import torch"
    warm bootstrap.sh   <= 1.5 x  verify --quick
    verify (full)       <= 3   x  python -c "import torch, diffusers, transformers, accelerate"

    python bench/verify_bench.py --home /work/devhome [--repeat 3] [--no-bootstrap]

The environment is only read. sd-env runs against a scratch home whose src/ is a
link to HOME/src and whose state.json is HOME's, so logs, the tiny model cache
and the bootstrap's tool venv land in the scratch home; the target venv is
fingerprinted (path, size, mtime of every file) before and after, and any change
is printed.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], env: dict[str, str], repeat: int) -> tuple[float, int]:
    """Median wall time of `repeat` runs, and the last exit code."""
    times, code = [], 0
    for _ in range(repeat):
        started = time.monotonic()
        code = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        times.append(time.monotonic() - started)
    return statistics.median(times), code


def fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            found[path] = (st.st_size, st.st_mtime_ns)
    return found


def scratch_home(home: Path, where: Path) -> Path:
    scratch = where / "home"
    scratch.mkdir()
    (scratch / "src").symlink_to(home / "src")
    if (home / "state.json").exists():
        shutil.copy2(home / "state.json", scratch / "state.json")
    return scratch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/work/devhome"), help="a finished sd-env home")
    parser.add_argument("--python", type=Path, help="its target interpreter (default: HOME/venv/bin/python)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--no-bootstrap", action="store_true", help="skip the warm ./bootstrap.sh figure")
    parser.add_argument("--no-full", action="store_true", help="skip the full verify figure")
    args = parser.parse_args()
    home = args.home.resolve()
    python = args.python or home / "venv" / "bin" / "python"
    venv = python.parent.parent
    sd_env = [sys.executable, "-m", "sd_env"]
    with tempfile.TemporaryDirectory(prefix="verify-bench-") as tmp:
        scratch = scratch_home(home, Path(tmp))
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
        env.update(SD_ENV_HOME=str(scratch), SD_ENV_PYTHON=str(python), HF_HUB_OFFLINE="1", COLUMNS="200")
        before = fingerprint(venv)
        # Warm-ups, not timed: the tiny model is built once, the tool venv made once, pages cached.
        subprocess.run([*sd_env, "verify"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows: list[tuple[str, float, int]] = []
        torch_s, _ = timed([str(python), "-c", "import torch"], env, args.repeat)
        rows.append(("python -c 'import torch'", torch_s, 0))
        quick_s, quick_rc = timed([*sd_env, "verify", "--quick"], env, args.repeat)
        rows.append(("sd-env verify --quick", quick_s, quick_rc))
        if not args.no_bootstrap:
            subprocess.run([str(ROOT / "bootstrap.sh")], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # builds the tool venv and records the full verify
            boot_s, boot_rc = timed([str(ROOT / "bootstrap.sh")], env, args.repeat)
            rows.append(("./bootstrap.sh (warm)", boot_s, boot_rc))
        if not args.no_full:
            stack_s, _ = timed([str(python), "-c", "import torch, diffusers, transformers, accelerate"], env,
                               args.repeat)
            rows.append(("python -c 'import torch, diffusers, transformers, accelerate'", stack_s, 0))
            full_s, full_rc = timed([*sd_env, "verify"], env, args.repeat)
            rows.append(("sd-env verify (full)", full_s, full_rc))
        changed = sorted(p for p, v in fingerprint(venv).items() if before.get(p) != v)
        changed += sorted(set(before) - set(fingerprint(venv)))

    print(f"home {home}, target {python}, median of {args.repeat}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    for name, seconds, code in rows:
        print(f"  {name:<64} {seconds:6.2f} s" + (f"  (exit {code})" if code else ""))
    figures = {name: s for name, s, _ in rows}

    def ratio(a: str, b: str, limit: float) -> None:
        if a in figures and b in figures:
            r = figures[a] / figures[b]
            print(f"  {a} / {b}: {r:.2f} (target <= {limit}) {'ok' if r <= limit else 'OVER'}")

    ratio("sd-env verify --quick", "python -c 'import torch'", 1.5)
    ratio("./bootstrap.sh (warm)", "sd-env verify --quick", 1.5)
    ratio("sd-env verify (full)", "python -c 'import torch, diffusers, transformers, accelerate'", 3.0)
    print(f"  files written into {venv}: {len(changed)}" + "".join(f"\n    {p}" for p in changed[:20]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
