"""Benchmark: `sd-env model lock` and `model fetch` of the tiny SD model from a Hub served on 127.0.0.1 (issue 22).

    python bench/model_fetch.py --python TARGET/venv/bin/python [--rate-mb 0] [--keep]

Builds the tiny model in the target (probes/tiny_sd.py, then its .bin and fp16 files, as a real repository
carries them), serves it with tests/kit/hubkit.py, and times through the CLI (each a fresh process, as a user runs it):
the lock (one API call, the small files hashed), a cold fetch, a re-run (every file checked by sha256, no
request), and a fetch after one blob was deleted. --rate-mb throttles the server's file endpoint (MB/s) to see
the fetch at a mirror's speed. Prints the files, bytes and seconds. Everything lives in a temporary folder,
deleted unless --keep.
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
sys.path.insert(0, str(ROOT))

from tests.kit.hubkit import OTHER_FORMATS, FakeHub, folder_files, stack_project  # noqa: E402

from sd_env.system import probe  # noqa: E402

REPO = "sd-env-test/tiny-sd"


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    got = subprocess.run([sys.executable, "-m", "sd_env", *argv], capture_output=True, text=True, env=env)
    if got.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{got.stdout[-2000:]}{got.stderr[-2000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, required=True, help="a target with torch and diffusers (a home's venv)")
    parser.add_argument("--rate-mb", type=float, default=0.0, help="throttle the file endpoint to this many MB/s")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="model-fetch-bench-"))
    hub = FakeHub().start()
    try:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for argv in ([str(probe.script("tiny_sd.py")), "--out", str(work / "tiny")],
                     ["-c", OTHER_FORMATS, str(work / "tiny" / "model")]):
            subprocess.run([str(args.python), *argv], check=True, capture_output=True, env=env)
        files = folder_files(work / "tiny" / "model")
        commit = hub.add("model", REPO, {**files, "README.md": b"# tiny\n"})
        manifest = stack_project(work / "project", REPO, commit)
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "VIRTUAL_ENV")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(work / "hf"))
        where = ["-m", str(manifest), "--home", str(work / "home"), "--python", str(args.python)]
        lock_s = timed(["model", "lock", *where], env)
        lock = json.loads(manifest.with_name("sc7-sd14-lora.model.lock.json").read_text())["model"]
        size = sum(f["size"] for f in lock["files"])
        hub.rate = args.rate_mb * 1e6 if args.rate_mb else None
        hub.requests.clear()
        cold = timed(["model", "fetch", *where], env)
        requests = len(hub.requests)
        hub.requests.clear()
        warm = timed(["model", "fetch", *where], env)
        warm_requests = len(hub.requests)
        blobs = work / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
        unet = next(f for f in lock["files"] if f["path"] == "unet/diffusion_pytorch_model.safetensors")
        (blobs / unet["etag"]).unlink()
        again = timed(["model", "fetch", *where], env)
        rate = f"{args.rate_mb} MB/s" if args.rate_mb else "unthrottled"
        print(f"repository: {len(files) + 1} files, {sum(map(len, files.values())) / 1e6:.2f} MB "
              f"(the tiny SD model in safetensors, .bin and fp16)")
        print(f"locked: {len(lock['files'])} files, {size / 1e6:.2f} MB ({lock['note']})")
        print(f"model lock:                         {lock_s:6.2f} s")
        print(f"model fetch, cold ({rate}):  {cold:6.2f} s, {requests} requests")
        print(f"model fetch, re-run:                {warm:6.2f} s, {warm_requests} requests")
        print(f"model fetch, the UNet blob deleted: {again:6.2f} s")
    finally:
        hub.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
