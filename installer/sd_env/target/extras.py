"""Packages in the target that the lock does not name, and `sd-env install --sync` removing them.

A `pip install` of something else leaves its closure behind; the environment
is then no longer exactly the lock. Never counted as extra: the managed
components, Sophgo's torch_tpu, pip/setuptools/wheel (the target needs them to
build the editable installs; Debian's venvs add pkg-resources), and sd-env with its own dependencies when sd-env
is installed in the target itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from sd_env.core import lockfile
from sd_env.core.manifest import Manifest
from sd_env.errors import InputError, StepError
from sd_env.report import OK, SKIPPED, Result, progress
from sd_env.system import tools
from sd_env.system.runner import Runner
from sd_env.target import envs, torchtpu

# pkg-resources: Debian's and Ubuntu's python3-venv put a `pkg_resources-0.0.0` distribution
# into every venv they make (with pip's own wheels); it is the system's, not a stray install.
KEEP = ("pip", "setuptools", "wheel", "pkg-resources")
SELF = "sd-env"


def _closure_of(root: str, inv: envs.Inventory) -> set[str]:
    """`root` and everything it requires, as installed (markers ignored: keeping too much is safe)."""
    requires = {canonicalize_name(n): e[0].get("requires") or [] for n, e in inv.dists.items()}
    seen: set[str] = set()
    todo = [canonicalize_name(root)]
    while todo:
        name = todo.pop()
        if name in seen or name not in requires:
            continue
        seen.add(name)
        for text in requires[name]:
            try:
                todo.append(canonicalize_name(Requirement(text).name))
            except InvalidRequirement:
                continue
    return seen


def find(man: Manifest, inv: envs.Inventory) -> list[str]:
    """Installed distributions the lock does not name (canonical names, sorted); [] without a lock."""
    if man.lock is None:
        return []
    lock = lockfile.read(man.lock.files[lockfile.flavour_order(man)[0]])
    keep: set[str] = set(lock.pins) | {canonicalize_name(c.name) for c in man.components} | set(KEEP)
    for root in (SELF, *KEEP):  # wheel >= 0.41 requires packaging, say: what a keeper needs stays too
        keep |= _closure_of(root, inv)
    if torchtpu.installed_google(inv) is None:
        # Sophgo's wheel and what it requires (Google's is refused elsewhere, with its own fix).
        keep |= {torchtpu.NAME} | _closure_of(torchtpu.NAME, inv)
    return sorted({str(canonicalize_name(n)) for n in inv.dists} - keep)


def sync(man: Manifest, runner: Runner, python: Path, *, yes: bool, use_uv: bool = True) -> tuple[Result, bool]:
    """Remove the extras, after a yes on a terminal (or --yes); say exactly what went, and
    whether anything was removed."""
    if man.lock is None:
        return Result("env", "sync", SKIPPED, "skipped: the manifest has no [lock], so nothing to compare "
                      "against"), False
    extras = find(man, envs.inventory(runner, python))
    if not extras:
        return Result("env", "sync", OK, "no packages outside the lock"), False
    names = ", ".join(extras)
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(f"--sync would remove {len(extras)} packages not in the lock: {names}",
                             "add --yes to remove them without asking")
        answer = input(f"remove {len(extras)} packages not in the lock ({names})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise InputError("--sync: nothing removed (not confirmed)", "answer y, or pass --yes")
    progress(f"removing {len(extras)} packages not in the lock: {names}")
    uv = tools.find_uv() if use_uv else None
    if uv:
        runner.run([uv, "pip", "uninstall", "--python", str(python), *extras])
    else:
        runner.run([str(python), "-m", "pip", "uninstall", "-y", "--disable-pip-version-check", *extras])
    left = [n for n in find(man, envs.inventory(runner, python)) if n in extras]
    if left:
        raise StepError(f"--sync: still installed after uninstalling: {', '.join(left)}",
                        "see the log for the uninstaller's output")
    return Result("env", "sync", OK, f"removed {len(extras)} packages not in the lock: {names}"), True
