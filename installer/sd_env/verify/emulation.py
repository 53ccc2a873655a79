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

from sd_env.core.manifest import Manifest
from sd_env.errors import EmulatorUnavailable, InputError
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner

# The torch_tpu eras emulated: torch 2.1.x (torch_tpu 2.1.0.post1, the tutorial's) and torch 2.8.x
# (torch_tpu 2.8.0.post1, Sophgo's current stack); csrc/compat.h holds what differs between them.
SUPPORTED_TORCH = ("2.1", "2.8")
CHECK_TIMEOUT = 120
BUILD_TIMEOUT = 30 * 60


@dataclass(frozen=True)
class Emulator:
    pythonpath: Path  # first on PYTHONPATH, it makes `import torch_tpu` load the emulator
    cached: bool
    seconds: float
    key: str
    era: str = "2.1"  # the torch_tpu era built for: "2.1" or "2.8"


@dataclass(frozen=True)
class Settings:
    """What the emulated device is told (the manifest's [emulator], --strict, the environment)."""

    profile: Path | None = None  # the strict profile's JSON file; None: only what the CPU kernels refuse
    memory: str | None = None  # per-device capacity ("16G"); None: no limit


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
    if era(str(info["torch"])) is None:
        raise EmulatorUnavailable(
            f"the tpu emulator supports torch {' and '.join(f'{v}.x' for v in SUPPORTED_TORCH)} (torch_tpu's "
            f"eras); the target has torch {info['torch']}",
            "emulate in an environment with torch==2.1.0 (-m sc7-sd14-lora) or torch==2.8.0 (-m sc7-sd15-lora)")
    key = f"torch{info['torch']}-py{info['python']}-{source_hash(root)}"
    emulated = era(str(info["torch"])) or "2.1"
    dest = paths.emulators / key
    if _complete(dest):
        return Emulator(dest, True, time.monotonic() - started, key, emulated)
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
    return Emulator(dest, False, time.monotonic() - started, key, emulated)


def era(torch_version: str) -> str | None:
    """The torch_tpu era ("2.1", "2.8") a torch version belongs to, or None."""
    return next((v for v in SUPPORTED_TORCH if torch_version.startswith(v + ".")), None)


def _drop_abandoned(folder: Path) -> None:
    """Remove the work folders of killed builds (their process is gone)."""
    for work in folder.glob(".*.building-*"):
        pid = work.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(work, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return any((folder / "torch_tpu").glob("_C*.so"))


def profile_path(name: str, emulated_era: str) -> Path:
    """A strict profile by name: "strict" is the era's (profiles/torch_tpu-ERA.json), another name a
    shipped profile, a path ending in .json the user's own file."""
    if name.endswith(".json"):
        found = Path(name)
    else:
        found = source() / "profiles" / f"{f'torch_tpu-{emulated_era}' if name == 'strict' else name}.json"
    if not found.is_file():
        shipped = ", ".join(sorted(p.stem for p in (source() / "profiles").glob("*.json")))
        raise InputError(f"no emulator profile {name!r} ({found})", f"use one of: strict, {shipped}, or a .json file")
    return found


def settings(man: Manifest, emu: Emulator, strict: bool = False) -> Settings:
    """--strict (the era's profile) or the manifest's [emulator] profile, and its memory."""
    wanted = "strict" if strict else man.emulator.profile
    return Settings(profile_path(wanted, emu.era) if wanted else None, man.emulator.memory)


def describe(setup: Settings) -> list[str]:
    """What the settings change, in words (for notes and report rows)."""
    said = []
    if setup.profile:
        said.append(f"strict profile {setup.profile.stem}: the device refuses what that plugin refuses "
                    f"({setup.profile})")
    memory = os.environ.get("SD_ENV_EMULATED_MEMORY") or setup.memory
    if memory:
        said.append(f"device capacity {memory} per device: past it an allocation fails as on the card")
    return said


def describe_devices(count: int) -> str:
    """What --devices N gives a command (a note)."""
    return (f"{count} emulated device(s), tpu:0 to tpu:{count - 1}; processes reach each other through the "
            '"sccl" backend (init_process_group(backend="sccl"); gloo on the host memory, int64 refused); '
            "accelerate launch --multi_gpu needs the stack's multi-device patch in its series "
            "(patches/accelerate-0.16.0-tpu-multi.diff, or accelerate-0.30.0-tpu-multi.diff for accelerate 0.30)")


def note(emu: Emulator, device: str) -> str:
    """What the device of a command is (a note)."""
    built = "cached" if emu.cached else f"built in {emu.seconds:.0f} s"
    return (f"{device} is emulated: torch_tpu {emu.era} on the CPU ({built}, {emu.key}); only a card shows the "
            "real device")


def environment(emu: Emulator, device: str = "tpu:0", setup: Settings | None = None) -> dict[str, str]:
    """Variables that make a run use the emulated device (to add to the run's environment).
    A capacity the user exported (SD_ENV_EMULATED_MEMORY) wins over the manifest's."""
    path = str(emu.pythonpath)
    if os.environ.get("PYTHONPATH"):
        path += os.pathsep + os.environ["PYTHONPATH"]
    env = {"PYTHONPATH": path, "ACCELERATE_TORCH_DEVICE": device, "SD_ENV_EMULATED": "1"}
    if setup and setup.profile:
        env["SD_ENV_EMULATED_PROFILE"] = str(setup.profile)
    if setup and setup.memory and not os.environ.get("SD_ENV_EMULATED_MEMORY"):
        env["SD_ENV_EMULATED_MEMORY"] = setup.memory
    return env
