"""Writing files so that a kill -9 at any moment leaves the old file or the new one, never half.

Every file sd-env rewrites in place (state.json, the repatch session, refreshed
patches, the manifest, a lock file, a downloaded wheel) goes through
`replacing`: a temporary file in the same folder (so the rename stays on one
file system), flushed and fsynced, renamed over the target, then the folder
fsynced so the rename itself survives a power cut. The temporary names share
one suffix, so a run that was killed leaves files the next run recognises.

`sha256_file` hashes a file of any size without reading it whole.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sd_env.system import faults

SUFFIX = ".sd-env-tmp"
_CHUNK = 1 << 20
# Other temporary names: patches.py's throw-away git index, and what an older sd-env used.
OTHERS = ("sd-env-index-*", ".state-*", "session.json.tmp", "*.diff.tmp", "*.patch.tmp", "*.toml.tmp", "*.partial")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; once the block succeeds it atomically becomes `path`.

    On an error the temporary file is removed and `path` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as out:
            out.flush()
            os.fsync(out.fileno())
        faults.point("atomic-write")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leftovers(folders: list[Path]) -> list[Path]:
    """Temporary files a killed run left in `folders` (not recursive)."""
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            for pattern in ("*" + SUFFIX, *OTHERS):
                found += [p for p in folder.glob(pattern) if p.is_file()]
    return sorted(set(found))


def remove_leftovers(folders: list[Path]) -> list[Path]:
    """Remove what `leftovers` finds; call only while holding the home's lock."""
    found = leftovers(folders)
    for path in found:
        path.unlink(missing_ok=True)
    return found


def sha256_file(path: Path) -> str:
    """The file's sha256, read in blocks (wheels and bundles are too big to read whole)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_size(folder: Path) -> int:
    """Bytes of the regular files under `folder` (links not followed, not counted)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def path_problem(rel: object) -> str | None:
    """Why `rel` cannot be a member path (None when it can): relative, "/"-separated, normalised,
    no empty, "." or ".." part, no control character or backslash."""
    if not isinstance(rel, str) or not rel:
        return "not a path"
    if rel.startswith("/"):
        return "absolute"
    if "\\" in rel or any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "a backslash or control character"
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "not normalised (an empty, '.' or '..' part)"
    return None
