"""Benchmark: deploy/image/build.sh on a bundle, with the disk it needs at its peak.

    python bench/image_bench.py BUNDLE [--base IMAGE] [--work DIR] [--keep]

Builds the image with podman into a store of its own under the work folder (a
temporary one by default; the user's images are not touched), with the network off.
The base is made there with deploy/image/make-base.sh, unless --base names an image
archive made by `podman save`. While the build runs, the store's filesystem is sampled
every half second; its peak growth over the start is the disk the build needs (run it
on an otherwise idle machine: the whole filesystem is measured). Prints the bundle's size, its
wheels unpacked, the build time, the image size and the peak, and the peak as a
multiple of the bundle: build.sh's space check asks for 8 times the bundle plus 1 GiB. Needs
root, podman, runc and debootstrap (or --base). Deletes the work folder unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fleet.test_image import IMAGE_DIR, podman_env  # the image tests' podman setup

BASE = "localhost/sd-env-bench-base:bullseye"


def unpacked(bundle: Path) -> int:
    return sum(info.file_size for whl in (bundle / "packages").glob("*.whl")
               for info in zipfile.ZipFile(whl).infolist())


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


class Peak:
    """The most the filesystem holding `path` grew over its use at start, sampled in a thread."""

    def __init__(self, path: Path) -> None:
        self.path, self.start, self.most = path, shutil.disk_usage(path).used, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.5):
            self.most = max(self.most, shutil.disk_usage(self.path).used - self.start)

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--base", type=Path, help="a base image archive (`podman save`); default: make-base.sh")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    missing = [t for t in ("podman", "runc", "unshare") + (() if args.base else ("debootstrap",))
               if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        print(f"cannot run: needs root and {', '.join(missing) or 'nothing else'}", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="image-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env, run = podman_env(work)
    try:
        if args.base:
            subprocess.run(["podman", "load", "-i", str(args.base)], env=env, check=True, capture_output=True)
            loaded = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"], env=env,
                                    check=True, capture_output=True, text=True).stdout.split()[0]
            subprocess.run(["podman", "tag", loaded, BASE], env=env, check=True)
        else:
            subprocess.run([str(IMAGE_DIR / "make-base.sh"), BASE, "--engine", "podman"], env=env, check=True,
                           capture_output=True)
        tag = "localhost/sd-env-bench:image"
        started = time.monotonic()
        with Peak(work) as peak:
            built = subprocess.run(["unshare", "-n", str(IMAGE_DIR / "build.sh"), str(args.bundle), "--base", BASE,
                                    "--tag", tag, "--engine", "podman", "--no-space-check"],
                                   env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if built.returncode != 0:
            print(built.stdout[-2000:] + built.stderr[-3000:], file=sys.stderr)
            return 1
        inspect = subprocess.run(["podman", "image", "inspect", tag], env=env, check=True, capture_output=True,
                                 text=True)
        image = int(json.loads(inspect.stdout)[0]["Size"])
        bundle = size(args.bundle)
        print(f"bundle {args.bundle}: {gb(bundle)}, wheels unpacked {gb(unpacked(args.bundle))}")
        print(f"build: {seconds:.0f} s; image {gb(image)}; peak disk {gb(peak.most)} "
              f"({peak.most / bundle:.1f}x the bundle; build.sh asks for 8x + 1 GiB: {gb(8 * bundle + 2**30)})")
        return 0
    finally:
        subprocess.run(["podman", "rmi", "--all", "--force"], env=env, capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
