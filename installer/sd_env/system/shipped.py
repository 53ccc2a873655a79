"""Where the shipped manifests/ and patches/ are: sd-env's checkout, else the copy its wheel installed.

A checkout (bootstrap.sh's editable install) keeps them beside installer/. A wheel install
(a bundle's bootstrap.sh, `pip install sd_env-*.whl`) puts them in the environment's
share/sd-env/ (pyproject.toml's data-files), with manifests/ and patches/ side by side as in
the checkout, so a manifest's `patches_dir = "../patches"` resolves in both.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[3]  # above installer/ when sd-env runs from a checkout
INSTALLED = ("share", "sd-env")  # the data folder of a wheel install, under the environment's prefix
PACKAGE = Path(__file__).resolve().parents[1]  # this sd_env package, to pick its own distribution


def root() -> Path:
    """The folder that holds manifests/ and patches/: the checkout first, then the installed copy.
    Neither: the checkout's path, whose empty manifests/ the callers report."""
    if (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "manifests").is_dir():
        return CHECKOUT
    return installed_root() or CHECKOUT


def manifests() -> Path:
    return root() / "manifests"


@functools.cache
def installed_root() -> Path | None:
    """share/sd-env of the sd-env distribution this code was installed from, by its RECORD (so a
    --user or --prefix install is found as well as a venv's); None when it has no shipped stacks."""
    from importlib import metadata  # here: a checkout never needs it, and `run` starts faster without

    for dist in metadata.distributions(name="sd-env"):
        if Path(str(dist.locate_file("sd_env"))).resolve() != PACKAGE:
            continue  # another sd-env on the path (a checkout running beside an installed copy)
        for file in dist.files or []:
            parts = file.parts
            if len(parts) >= 4 and parts[-4:-2] == INSTALLED and parts[-2] == "manifests":
                return Path(str(dist.locate_file(file))).resolve().parents[1]
    return None


def is_installed_copy(path: Path) -> bool:
    """Whether `path` lies in the installed copy (its manifests belong to no project)."""
    found = installed_root()
    return found is not None and path.resolve().is_relative_to(found)


def source_copy(src: Path) -> Path:
    """The checkout's source copied to `src`, to build sd-env's wheel from (`bundle create`; an in-tree
    build would leave build/ in the checkout): with manifests/ and patches/, which the wheel carries."""
    shutil.rmtree(src, ignore_errors=True)
    for name in ("installer", "manifests", "patches"):
        shutil.copytree(CHECKOUT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(CHECKOUT / name, src / name)
    return src
