"""Environments of an upstream release's era, for running its example on the emulated device.

An era overlay is a small venv layered on a cached torch venv (its packages seen
through a .pth file): what the release's example imports, resolved by uv as PyPI
had it shortly after the release (`--exclude-newer`), torch, torchvision and
setuptools held at the base's, installed with --no-deps where the base has
another version. What torch itself requires (its nvidia-* wheels, sympy, ...)
is exempt from the date: torch 2.8 pins nvidia wheels of 2025, which an era of
2024 would otherwise not have.
The release's own library is not installed: the caller puts its source first on
PYTHONPATH. Overlays are cached per machine under $SD_ENV_TEST_CACHE/eras, keyed
by what they were resolved from.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from sd_env.target.closure import find_uv
from tests.conftest import run_in

COMPLETE = ".sd-env-era-complete"
# The names of the installed distributions torch requires, transitively (extras left out), torch included.
_TORCH_CLOSURE = """
import importlib.metadata as md, json, re
todo, seen = ["torch"], set()
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen:
        continue
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    seen.add(name)
    todo += [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in dist.requires or [] if "extra ==" not in r]
print(json.dumps(sorted(seen)))
"""


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def overlay(base: Path, cache: Path, label: str, requirements: list[str], exclude_newer: datetime.date) -> Path:
    """The era's interpreter: `requirements` as of `exclude_newer`, on top of `base` (a torch venv)."""
    uv = find_uv()
    assert uv, "uv is needed to resolve an era's packages"
    have = json.loads(subprocess.run([str(base), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                                     capture_output=True, text=True, check=True).stdout)
    # torch as the base has it, and its setuptools: torch 2.1 imports `packaging` from pkg_resources, which
    # setuptools 70 no longer has.
    held = [f"{p['name']}=={p['version']}" for p in have
            if _name(p["name"]) in ("torch", "torchvision", "triton", "setuptools")]
    undated = sorted({_name(pin.split("==")[0]) for pin in held} |
                     set(json.loads(run_in(base, _TORCH_CLOSURE))))
    key = hashlib.sha256(json.dumps([str(base), requirements, held, undated, str(exclude_newer)]).encode()
                         ).hexdigest()[:12]
    where = cache / f"{label}-{key}"
    python = where / "venv" / "bin" / "python"
    if (where / COMPLETE).is_file():
        return python
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    (where / "requirements.in").write_text("\n".join([*requirements, *held]) + "\n")
    version = run_in(base, "import sys; print('%d.%d' % sys.version_info[:2])")
    subprocess.run([uv, "pip", "compile", "-q", str(where / "requirements.in"), "--python-version", version,
                    "--exclude-newer", exclude_newer.isoformat(), "-o", str(where / "pins.txt"),
                    *[arg for name in undated for arg in ("--exclude-newer-package", f"{name}=2100-01-01")]],
                   check=True,
                   timeout=600)
    installed = {_name(p["name"]): p["version"] for p in have}
    pins = [line.split()[0] for line in (where / "pins.txt").read_text().splitlines() if "==" in line
            and not line.startswith("#")]
    todo = [p for p in pins if installed.get(_name(p.split("==")[0])) != p.split("==")[1]]
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(where / "venv")], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    Path(run_in(python, purelib), "_era_base.pth").write_text(run_in(base, purelib) + "\n")
    if todo:
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "--no-deps", *todo], check=True,
                       timeout=1800)
    (where / COMPLETE).write_text("\n".join(todo) + "\n")
    return python
