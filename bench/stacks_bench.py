"""Benchmark and proof for the shipped stacks: each one installed into a fresh home and verified.

  python bench/stacks_bench.py [NAME ...] [--git-mirror PREFIX] [--full] [--keep]

For each stack (default: the ones besides the default manifest): `sd-env install -m NAME`
into a new home (sd-env creates the target venv with the stack's Python, installs the era
lock with hashes, fetches the components by git through the mirror or from their PyPI
sdists, applies the patches, builds them editable), then `sd-env verify --quick`, and with
--full the whole verify (the LoRA training step on a tiny model, with the stack's example
script when its checkout has one). Prints each step's wall time, the bytes received and the
size of the environment; the install's own per-step results are printed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bootstrap_bench import du, timed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["sc7-sd14-lora-py310", "sc7-sd15-lora"]


def sd_env() -> str:
    here = Path(sys.executable).parent / "sd-env"
    return str(here) if here.exists() else "sd-env"


def run_stack(name: str, where: Path, mirror: str | None, full: bool) -> dict:
    home = where / name
    env = {**os.environ, "SD_ENV_HOME": str(home), "COLUMNS": "200"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("SD_ENV_PYTHON", None)
    install = [sd_env(), "install", "-m", name, "--home", str(home)] + (["--git-mirror", mirror] if mirror else [])
    out: dict = {"stack": name}
    out["install_s"], out["install_rx"], out["install_rc"] = timed(f"{name}: install", install, env)
    again = timed(f"{name}: install again (nothing to do)", install, env)
    out["reinstall_s"] = again[0]
    report = subprocess.run([sd_env(), "status", "--json", "-m", name, "--home", str(home)], env=env,
                            capture_output=True, text=True)
    if report.returncode == 0:
        for row in json.loads(report.stdout)["components"]:
            print(json.dumps({k: row[k] for k in ("name", "source", "patches", "install") if k in row}))
    quick = [sd_env(), "verify", "--quick", "-m", name, "--home", str(home)]
    out["verify_quick_s"], _, out["verify_quick_rc"] = timed(f"{name}: verify --quick", quick, env)
    if full:
        whole = [sd_env(), "verify", "-m", name, "--home", str(home)]
        out["verify_s"], _, out["verify_rc"] = timed(f"{name}: verify (LoRA step)", whole, env)
    out["venv_bytes"] = du(home / "venv")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=DEFAULT)
    parser.add_argument("--git-mirror", default=None)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    where = Path(tempfile.mkdtemp(prefix="stacks-bench-"))
    try:
        results = [run_stack(n, where, args.git_mirror, args.full) for n in args.names]
    finally:
        if not args.keep:
            shutil.rmtree(where, ignore_errors=True)
    for r in results:
        print(json.dumps(r))
    return 0 if all(r["install_rc"] == 0 and r["verify_quick_rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
