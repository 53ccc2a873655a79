"""Benchmark: an offline bundle of the default manifest, and installing from it with no network.

    python bench/bundle_bench.py [--from-home /work/devhome] [--mirror /work/shared/mirrors] [--keep]
                                 [--bundle OUT]   (an existing bundle: skip create)

Measures, for manifests/sc7-sd14-lora.toml: `sd-env bundle create` (taking the
component checkouts from a finished home, read only; the locked wheels are
downloaded, through pip's HTTP cache when warm), `sd-env bundle verify`, then
`sd-env install --bundle` in a network namespace with no interfaces
(`unshare -n`, needs root) and an empty uv cache, against the online
`sd-env install` (git from --mirror, the lock from the index), once with an
empty uv cache and once with the uv cache as it is on this machine (say
whether it was warm). Everything is written under
a temporary folder, which is deleted unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifests" / "sc7-sd14-lora.toml"
SD_ENV = str(Path(sys.executable).with_name("sd-env"))


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def timed(label: str, argv: list[str], env: dict[str, str] | None = None) -> float:
    print(f"* {label}: {' '.join(argv)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(argv, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"{label} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-home", type=Path, default=Path("/work/devhome"))
    parser.add_argument("--mirror", default="/work/shared/mirrors")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--bundle", type=Path, help="use this bundle instead of creating one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bundle-bench-", dir=os.environ.get("TMPDIR")))
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SD_ENV_HOME", "SD_ENV_PYTHON")}
    os.environ.clear()
    os.environ.update(clean)
    rows = []
    try:
        out = args.bundle or work / "bundle"
        if args.bundle is None:
            rows.append(("bundle create", timed("create", [SD_ENV, "bundle", "create", str(out), "-m",
                                                           str(MANIFEST), "--home", str(work / "create-home"),
                                                           "--from-home", str(args.from_home)]), du(out)))
        rows.append(("bundle verify", timed("verify", [SD_ENV, "bundle", "verify", str(out)]), None))
        offline_home = work / "offline-home"
        rows.append(("install --bundle (unshare -n, empty uv cache)",
                     timed("offline install", ["unshare", "-n", SD_ENV, "install", "--bundle", str(out), "--home",
                                               str(offline_home)], {"UV_CACHE_DIR": str(work / "empty-uv-cache")}),
                     du(offline_home / "venv")))
        for label, cache in (("empty uv cache", {"UV_CACHE_DIR": str(work / "empty-uv-cache-2")}),
                             ("uv cache as it is here", {})):
            online_home = work / f"online-home-{len(rows)}"
            rows.append((f"install online (--git-mirror, {label})",
                         timed("online install", [SD_ENV, "install", "-m", str(MANIFEST), "--home",
                                                  str(online_home), "--git-mirror", args.mirror], cache),
                         du(online_home / "venv")))
        index = json.loads((out / "index.json").read_text())
        kinds: dict[str, list[int]] = {}
        for m in index["members"]:
            kinds.setdefault(m["kind"], []).append(m["size"])
        print("| step | wall time | size |\n| --- | --- | --- |")
        for label, seconds, size in rows:
            print(f"| {label} | {seconds:.1f} s | {'' if size is None else f'{size / 1e9:.2f} GB'} |")
        shown = ", ".join(f"{k} {len(v)} ({sum(v) / 1e6:.1f} MB)" for k, v in sorted(kinds.items()))
        print(f"\nbundle members: {shown}")
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
