"""The emulated tpu device: build it against the target's torch, cached.

The emulator (emulator/: a C++ PrivateUse1 extension and a Python package
importable as `torch_tpu`) is compiled by the target's interpreter on first
use, into `<home>/emulator/<key>`, keyed by torch version, Python version and
the hash of the emulator's source. It is never installed into the target:
`environment()` puts it first on PYTHONPATH for the one run that asks for it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sd_env import probe
from sd_env.errors import EmulatorUnavailable
from sd_env.paths import Paths
from sd_env.runner import Runner

SUPPORTED_TORCH = "2.1"  # the torch_tpu era emulated: torch 2.1.x
CHECK_TIMEOUT = 120
BUILD_TIMEOUT = 30 * 60


@dataclass(frozen=True)
class Emulator:
    pythonpath: Path  # first on PYTHONPATH, it makes `import torch_tpu` load the emulator
    cached: bool
    seconds: float
    key: str


def source() -> Path:
    """The emulator's source folder shipped with sd-env."""
    return Path(str(resources.files("sd_env") / "emulator"))


def source_hash(root: Path | None = None) -> str:
    root = root or source()
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".cpp", ".h")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build(runner: Runner, python: Path, paths: Paths, root: Path | None = None) -> Emulator:
    """The emulator for `python`'s torch: from the cache, else compiled now (about half a minute)."""
    started = time.monotonic()
    root = root or source()
    found = probe.run(runner, python, root / "build.py", ["check"], timeout=CHECK_TIMEOUT)
    if found.data is None or "torch" not in found.data:
        raise EmulatorUnavailable(f"cannot read the target's torch with {python}: {found.problem}",
                                  "install torch==2.1.0 in the target (sd-env install does)")
    info = found.data
    if not info["torch"]:
        raise EmulatorUnavailable(f"the target {python} has no torch",
                                  "install torch==2.1.0 in the target (sd-env install does)")
    if not str(info["torch"]).startswith(SUPPORTED_TORCH + "."):
        raise EmulatorUnavailable(
            f"the tpu emulator supports torch {SUPPORTED_TORCH}.x (torch_tpu's era); the target has torch "
            f"{info['torch']}", "emulate in an environment with torch==2.1.0 (the default manifest's)")
    key = f"torch{info['torch']}-py{info['python']}-{source_hash(root)}"
    dest = paths.emulators / key
    if _complete(dest):
        return Emulator(dest, True, time.monotonic() - started, key)
    missing = []
    if not info.get("compiler"):
        missing.append("g++")
    if not info.get("headers"):
        missing.append(f"python{info['python']}-dev")
    if missing:
        what = " and no ".join(["C++ compiler" if m == "g++" else f"Python {info['python']} headers"
                                for m in missing])
        raise EmulatorUnavailable(f"cannot build the tpu emulator: no {what} (looked for $CXX, c++, g++, clang++ "
                                  f"and {info.get('include')}/Python.h)", f"sudo apt install {' '.join(missing)}")
    # Build beside the cache entry, then rename: an interrupted build leaves no half-built entry.
    paths.emulators.mkdir(parents=True, exist_ok=True)
    _drop_abandoned(paths.emulators)
    work = paths.emulators / f".{key}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        runner.run([str(python), str(root / "build.py"), "build", str(work)], timeout=BUILD_TIMEOUT,
                   label="building the tpu emulator", hint="the compiler's messages are in the log")
        if not _complete(dest):  # else another run finished first (work goes below)
            shutil.rmtree(dest, ignore_errors=True)  # an entry without its extension is not one
            os.replace(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Emulator(dest, False, time.monotonic() - started, key)


def _drop_abandoned(folder: Path) -> None:
    """Remove the work folders of killed builds (their process is gone)."""
    for work in folder.glob(".*.building-*"):
        pid = work.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(work, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return any((folder / "torch_tpu").glob("_C*.so"))


def environment(emu: Emulator, device: str = "tpu:0") -> dict[str, str]:
    """Variables that make a run use the emulated device (to add to the run's environment)."""
    path = str(emu.pythonpath)
    if os.environ.get("PYTHONPATH"):
        path += os.pathsep + os.environ["PYTHONPATH"]
    return {"PYTHONPATH": path, "ACCELERATE_TORCH_DEVICE": device, "SD_ENV_EMULATED": "1"}
