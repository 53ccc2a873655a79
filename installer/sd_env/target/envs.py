"""Find or create the target environment (Python 3.9 by default).

Order: --python / $SD_ENV_PYTHON (an environment is used as it is; a bare
interpreter becomes the base of a new venv), the active venv, the active
conda env (not `base`), an earlier `<home>/venv`, then a new one made with
conda, pyenv's 3.9, python3.9 on PATH, or a standalone CPython 3.9 under the home
(pythons.py: one there already, the bundle's, or one uv downloads).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from sd_env.core import stacks
from sd_env.errors import InputError
from sd_env.report import progress
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import inventory_cache, pythons


@dataclass(frozen=True)
class Inventory:
    python: tuple[int, int, int]
    executable: str
    prefix: str
    is_env: bool
    dists: dict[str, list[dict]]  # name as written -> one entry per installed copy
    markers: dict[str, str] = field(default_factory=dict)  # PEP 508 marker variables of the interpreter


def inventory(runner: Runner, python: Path, cache: Path | None = None) -> Inventory:
    """What the interpreter is and has, asked in a subprocess (a broken env cannot crash sd-env);
    with `cache` (a folder), kept there and reused while the target's files are unchanged."""
    data = inventory_cache.load(cache, python) if cache is not None else None
    if data is None:
        from importlib import resources  # here, not at the top: 15 ms of start-up

        started = time.time_ns()
        probe = resources.files("sd_env") / "probes" / "inventory.py"
        with resources.as_file(probe) as script:
            out = runner.run([str(python), "-I", str(script)], timeout=120, label="reading the target environment",
                             hint=f"{python} does not run; recreate the environment").stdout
        data = json.loads(out)
        if cache is not None:
            inventory_cache.store(cache, python, data, started)
    return Inventory(tuple(data["python"]), data["executable"], data["prefix"], data["is_env"],
                     data["dists"], data.get("markers", {}))


@dataclass(frozen=True)
class Target:
    """The target environment as `resolve` found it."""

    python: Path | None  # None: there is none yet and the command does not create one
    how: str  # where it came from, for messages (or why there is none)
    created: bool = False  # this call made the venv or conda env: a change, for install --json
    # What the probe read while checking the version, for an environment used as it is (a new
    # one is empty: install probes it again after installing).
    inventory: Inventory | None = None


def resolve(runner: Runner, explicit: str | None, home: Path, want: str, create: bool = True,
            sources: pythons.Sources | None = None, cache: Path | None = None) -> Target:
    """The target interpreter and how it was found; `<home>/venv` is created when needed
    unless `create` is False (read-only commands), which gives a Target without python.
    With `sources`, a machine without Python `want` gets a standalone one under the home;
    with `cache`, an inventory read before is reused while still true (inventory_cache.py)."""
    base: tuple[Path, str, Inventory] | None = None
    for value, source in ((explicit, "--python"), (os.environ.get("SD_ENV_PYTHON"), "$SD_ENV_PYTHON")):
        if value:
            python = _interpreter(Path(value).expanduser(), source)
            inv = inventory(runner, python, cache)
            if inv.is_env:
                return _existing(runner, python, want, source, inv)
            base = (python, source, inv)  # a bare interpreter: the base of <home>/venv
            break
    if base is None and os.environ.get("VIRTUAL_ENV"):
        python = _interpreter(Path(os.environ["VIRTUAL_ENV"]), "$VIRTUAL_ENV")
        return _existing(runner, python, want, "the active venv", cache=cache)
    conda_env = os.environ.get("CONDA_PREFIX")
    if base is None and conda_env and os.environ.get("CONDA_DEFAULT_ENV", "") != "base":
        python = _interpreter(Path(conda_env), "$CONDA_PREFIX")
        return _existing(runner, python, want, "the active conda env", cache=cache)
    venv_dir = Paths(home).venv
    existing = venv_dir / "bin" / "python"
    if existing.exists() and (venv_dir / COMPLETE).exists():
        return _existing(runner, existing, want, str(venv_dir), cache=cache)
    if not create:
        return Target(None, "no target environment yet (run `sd-env install`)")
    if base is not None:
        return Target(_create_venv(runner, base[0], venv_dir, want, base[1], base[2]), f"new venv from {base[1]}",
                      created=True)
    conda = shutil.which("conda")
    if conda:
        progress(f"creating a conda env with Python {want} at {venv_dir}")
        shutil.rmtree(venv_dir, ignore_errors=True)
        runner.run([conda, "create", "-y", "-q", "-p", str(venv_dir), f"python={want}"],
                   timeout=1800, hint="conda could not create the environment; see the log",
                   label=f"conda: creating {venv_dir}")
        (venv_dir / COMPLETE).write_text("created by conda\n")
        _check_version(runner, existing, want, "conda")
        return Target(existing, "new conda env", created=True)
    found = find_base(runner, want) or pythons.installed(home, want)
    if found is None and sources is not None:
        found = pythons.obtain(runner, home, want, sources, LOOKED.format(want=want))
    if found is None:
        raise InputError(
            f"no Python {want} found (looked at {LOOKED.format(want=want)})",
            f"install one, then run again: `conda create -n sd python={want}` and activate it; or "
            f"`pyenv install {want}`; or `sudo apt install python{want} python{want}-venv`; or pass "
            f"--python /path/to/python{want}" + stacks.for_this_machine(want))
    return Target(_create_venv(runner, found, venv_dir, want, str(found)), f"new venv from {found}", created=True)


LOOKED = ("--python, $SD_ENV_PYTHON, the active venv/conda env, conda, pyenv, python{want} on PATH and the home's "
          "python/")


def _interpreter(path: Path, source: str) -> Path:
    """An interpreter path, or the interpreter of an environment folder."""
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe", path / "python"):
            if candidate.exists():
                return candidate.absolute()
        raise InputError(f"{source}: {path} has no bin/python", "name an interpreter or an environment folder")
    if not path.exists():
        raise InputError(f"{source}: {path} does not exist", "name an interpreter or an environment folder")
    return path.absolute()


def find_base(runner: Runner, want: str) -> Path | None:
    """A bare interpreter of version `want`: pyenv's, then python3.X on PATH."""
    candidates = []
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = runner.run([pyenv, "root"], check=False, timeout=60).stdout.strip()
        found = glob.glob(os.path.join(root, "versions", f"{want}*", "bin", "python"))
        candidates += sorted(found, key=_version_key, reverse=True)
    on_path = shutil.which(f"python{want}")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        out = runner.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                         check=False, timeout=60)
        if out.returncode == 0 and out.stdout.strip() == want:
            return Path(candidate)
    return None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


COMPLETE = ".sd-env-complete"  # written last: a venv without it was interrupted mid-creation


def _create_venv(runner: Runner, base: Path, where: Path, want: str, source: str,
                 inv: Inventory | None = None) -> Path:
    _check_version(runner, base, want, source, inv)
    progress(f"creating the target venv {where} with {base}")
    shutil.rmtree(where, ignore_errors=True)  # only ever a half-made one (see COMPLETE)
    # Python 3.9's ensurepip leaves the CA bundle it extracted in $TMPDIR (tmpXXXXcacert.pem,
    # 275 KB per venv): given a folder of its own, which goes away after.
    with tempfile.TemporaryDirectory(prefix="sd-env-venv-") as scratch:
        runner.run([str(base), "-m", "venv", str(where)], env={"TMPDIR": scratch}, timeout=600,
                   hint=f"on Debian/Ubuntu: sudo apt install python{want}-venv", label=f"creating {where}")
    (where / COMPLETE).write_text(f"created from {base}\n")
    return where / "bin" / "python"


def _existing(runner: Runner, python: Path, want: str, source: str, inv: Inventory | None = None,
              cache: Path | None = None) -> Target:
    """An environment used as it is, once its version is checked."""
    return Target(python, source, inventory=_check_version(runner, python, want, source, inv, cache))


def _check_version(runner: Runner, python: Path, want: str, source: str, inv: Inventory | None = None,
                   cache: Path | None = None) -> Inventory:
    """The interpreter's inventory (`inv` when the caller has it), once its version is `want`."""
    inv = inv or inventory(runner, python, cache)
    have = inv.python
    if f"{have[0]}.{have[1]}" != want:
        raise InputError(f"{source}: {python} is Python {have[0]}.{have[1]}.{have[2]}, the manifest wants {want}",
                         f"point --python at a Python {want} interpreter or environment")
    return inv
