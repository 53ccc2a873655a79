"""Packages patched in place by Sophgo's own patch script, told apart from unknown local edits.

Sophgo's script (sophgo/torch-tpu, for accelerate 0.30.1 and transformers 4.41.2)
checks the exact version, runs `patch -p3` into site-packages and marks the
package as patched with a sentinel file `<package>/sophgo.py`; it keeps no
hashes. So the sentinel says who changed the files, not what they hold now.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

SENTINEL = "sophgo.py"
SCRIPT = "Sophgo's in-place patch script"


@dataclass(frozen=True)
class InPlace:
    sentinel: Path  # the sentinel file found
    where: str  # "checkout" or "site-packages"
    package_dir: str  # the package folder, relative to the checkout ("src/accelerate") or absolute

    def describe(self) -> str:
        return f"patched in place by {SCRIPT} (sentinel {self.sentinel})"


def import_name(dist: str) -> str:
    return canonicalize_name(dist).replace("-", "_")


def in_checkout(checkout: Path, dist: str) -> InPlace | None:
    """The sentinel in a checkout's package folder (src layout or flat)."""
    name = import_name(dist)
    for rel in (f"src/{name}", name):
        sentinel = checkout / rel / SENTINEL
        if sentinel.is_file():
            return InPlace(sentinel, "checkout", rel)
    return None


def in_site(entries: list[dict], dist: str) -> InPlace | None:
    """The sentinel next to an installed (not editable) copy: `<site-packages>/<package>/sophgo.py`.
    `entries` are the inventory's entries of the distribution (their `path` is the .dist-info folder)."""
    name = import_name(dist)
    for entry in entries:
        if not entry.get("path") or entry.get("editable"):
            continue
        package = Path(entry["path"]).parent / name
        if (package / SENTINEL).is_file():
            return InPlace(package / SENTINEL, "site-packages", str(package))
    return None


def explained(found: InPlace, edited: list[str]) -> tuple[list[str], list[str]]:
    """Split a checkout's edited paths into those inside the patched package and the rest."""
    prefix = found.package_dir.rstrip("/") + "/"
    inside = [p for p in edited if p.startswith(prefix)]
    return inside, [p for p in edited if not p.startswith(prefix)]
