"""Does a torch_tpu wheel fit a stack? Its tags against the Python, its version against torch.

Sophgo builds torch_tpu for one Python (cp39 for the tutorial, cp310 for the
v0.1 release, cp311/cp312 later) and one torch minor (2.1.0.post1 goes with
torch 2.1, 2.8.0.post1 with torch 2.8). A wheel that does not fit is refused
before anything is installed, naming the shipped stack it fits, if any.
"""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version

from sd_env.core import stacks
from sd_env.core.manifest import Manifest
from sd_env.errors import InputError
from sd_env.target import torchtpu


def misfits(man: Manifest, path: Path, meta: dict) -> list[str]:
    """Why the wheel at `path` (with its METADATA fields `meta`) does not fit `man`; empty when it does."""
    if torchtpu.is_google(meta):
        return [f"it is Google's torch-tpu {meta.get('version', '')}, not Sophgo's"]
    try:
        _name, version, _build, tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        return [f"its file name is not a wheel's ({exc})"]
    problems = []
    if not any(_fits_python(t.interpreter, t.abi, man.python) for t in tags):
        built = ", ".join(sorted({t.interpreter for t in tags}))
        problems.append(f"it is built for {built}, the stack is Python {man.python}")
    torch = stacks.torch_version(man)
    if torch:
        wanted = _torch_requirement(meta)
        if wanted is not None and not wanted.specifier.contains(torch, prereleases=True):
            problems.append(f"it requires {wanted}, the stack pins torch {torch}")
        elif wanted is None and Version(torch).release[:2] != version.release[:2]:
            problems.append(f"torch_tpu {version} goes with torch {'.'.join(map(str, version.release[:2]))}, "
                            f"the stack pins torch {torch}")
    platform = man.lock.platform.split("-")[0] if man.lock else ""
    if platform and not any(t.platform == "any" or t.platform.endswith(platform) for t in tags):
        problems.append(f"it is built for {', '.join(sorted({t.platform for t in tags}))}, the stack is {platform}")
    return problems


def check_fit(man: Manifest, path: Path, shipped: list[Manifest] | None = None) -> None:
    """Raise InputError, naming the shipped stacks the wheel fits, when it does not fit `man`."""
    meta = torchtpu.wheel_metadata(path)
    problems = misfits(man, path, meta)
    if not problems:
        return
    candidates = stacks.shipped() if shipped is None else shipped
    fitting = [m.name for m in candidates if m.name != man.name and not misfits(m, path, meta)]
    message = f"{path.name} does not fit the stack {man.name}: " + "; ".join(problems) + "; nothing was installed"
    if torchtpu.is_google(meta):
        raise InputError(message, torchtpu.COLLISION + f". Get Sophgo's wheel from {torchtpu.SOPHGO_RELEASES}")
    if fitting:
        hint = f"use the stack made for it: -m {fitting[0]}" + (f" (also fits: {', '.join(fitting[1:])})"
                                                                  if fitting[1:] else "")
    else:
        hint = (f"no shipped stack fits it (`sd-env stacks` lists them); get the wheel for Python {man.python} "
                f"and torch {stacks.torch_version(man) or '?'} from {torchtpu.SOPHGO_RELEASES}")
    raise InputError(message, hint)


def _fits_python(interpreter: str, abi: str, python: str) -> bool:
    major, minor = python.split(".")
    if interpreter in (f"cp{major}{minor}", f"py{major}{minor}", f"py{major}"):
        return True
    # A stable-ABI wheel built for an older CPython runs on newer ones.
    return abi == "abi3" and interpreter.startswith(f"cp{major}") and int(interpreter[3:] or 0) <= int(minor)


def _torch_requirement(meta: dict) -> Requirement | None:
    for text in meta.get("requires_dist", []):
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.name == "torch" and req.specifier and not req.marker:
            return req
    return None
