"""The target's inventory kept in the home, so `sd-env run` and `shell` need not start the
target interpreter (about 0.1 s) before starting the command.

An entry is used only while everything the inventory was read from is as it was: the
interpreter (the venv's link and the file it points to), pyvenv.cfg, every folder on the
target's sys.path, and in those the metadata of each distribution (`*.dist-info`,
`*.egg-info` and their METADATA / PKG-INFO / direct_url.json / requires.txt, `.egg-link`,
`.pth`), each by inode, size, mtime and ctime; and the kernel (the PEP 508 markers name
it). Installing or removing a package adds or removes an entry in a folder on sys.path,
which changes that folder's mtime and ctime, so a stale entry is never used. A file changed
within MARGIN seconds before it was read might share its timestamp with a later change
(file systems with coarse clocks), so such an inventory is not kept (as git's "racy" rule).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sd_env import __version__
from sd_env.system import fsutil

FORMAT = 1
MARGIN = 2.0  # seconds: a file younger than this when the inventory was read is not trusted to stay told apart
PROBE = Path(__file__).resolve().parents[1] / "probes" / "inventory.py"
_METADATA = (".dist-info", ".egg-info", ".egg-link", ".egg", ".pth")
_INSIDE = ("METADATA", "PKG-INFO", "direct_url.json", "requires.txt")  # what the probe reads in a metadata folder


def entry_file(cache: Path, python: Path) -> Path:
    return cache / (hashlib.sha256(str(python).encode()).hexdigest()[:16] + ".json")


def load(cache: Path, python: Path) -> dict[str, Any] | None:
    """The probe's output for `python`, when an entry exists and nothing it depends on changed."""
    try:
        entry = json.loads(entry_file(cache, python).read_text(encoding="utf-8"))
        if entry["format"] != FORMAT or entry["sd_env"] != __version__ or entry["python"] != str(python):
            return None
        data = entry["inventory"]
        return data if entry["stamp"] == stamp(python, data) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no entry, or one an older sd-env (or a cut write) left: read the target again


def store(cache: Path, python: Path, data: dict[str, Any], started_ns: int) -> None:
    """Keep `data`, read from `python` by a probe started at `started_ns` (time.time_ns()),
    unless something it depends on changed too shortly before (or while) it was read."""
    if "path" not in data:
        return
    rows = stamp(python, data)
    newest = max((t for row in rows if len(row) == 5 for t in row[3:]), default=0)
    if newest > started_ns - MARGIN * 1e9:
        return
    entry = {"format": FORMAT, "sd_env": __version__, "python": str(python), "stamp": rows, "inventory": data}
    # A read-only or full home: the command still runs, and reads the target next time too.
    with contextlib.suppress(OSError):
        fsutil.write_atomic(entry_file(cache, python), json.dumps(entry))


def stamp(python: Path, data: dict[str, Any]) -> list[list[Any]]:
    """What the inventory depends on, one row per file: [path, inode, size, mtime_ns, ctime_ns],
    or [path] for a file that is not there."""
    rows = [_stat(str(python), follow=False), _stat(str(python)), _stat(os.path.join(data["prefix"], "pyvenv.cfg")),
            _stat(os.path.join(data["prefix"], "conda-meta")),
            _stat(str(PROBE)), ["uname", *os.uname()]]
    for folder in data["path"]:
        rows.append(_stat(folder))
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue  # a zip or a missing folder: its own row says so
        for name in names:
            if name.endswith(_METADATA):
                where = os.path.join(folder, name)
                rows.append(_stat(where))
                if name.endswith((".dist-info", ".egg-info")):
                    rows += [_stat(os.path.join(where, inside)) for inside in _INSIDE]
    return rows


def _stat(path: str, follow: bool = True) -> list[Any]:
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return [path]
    return [path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]

