"""Locked Hub files laid out as a Hugging Face Hub cache, so `from_pretrained(repo, revision=COMMIT)` finds them.

The layout is huggingface_hub's own: `CACHE/models--OWNER--NAME/blobs/ETAG` holds the bytes,
`snapshots/COMMIT/PATH` is a relative link to that blob (datasets: `datasets--OWNER--NAME`).
A file is written beside its blob as `ETAG.incomplete` (the name huggingface_hub resumes from
too), checked against the lock's size and sha256, and only then renamed to its blob and
linked: a file that differs from its hash is removed, never placed, so the snapshot never
holds it. The cache is where the target's huggingface_hub looks: HF_HUB_CACHE,
HUGGINGFACE_HUB_CACHE (what huggingface_hub 0.16 reads), HF_HOME/hub, else
~/.cache/huggingface/hub.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sd_env.core.hublock import LockedFile, LockedRepo
from sd_env.system.fsutil import sha256_file

INCOMPLETE = ".incomplete"


def hub_cache(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(env.get("HF_HOME") or os.path.join(base, "huggingface")).expanduser() / "hub"


@dataclass(frozen=True)
class Snapshot:
    cache: Path
    repo: LockedRepo

    @property
    def storage(self) -> Path:
        return self.cache / f"{self.repo.kind}s--{self.repo.repo.replace('/', '--')}"

    @property
    def folder(self) -> Path:
        """What `from_pretrained` gets for (repo, revision): pass it as a local folder too."""
        return self.storage / "snapshots" / self.repo.revision

    def blob(self, f: LockedFile) -> Path:
        return self.storage / "blobs" / f.etag

    def pointer(self, f: LockedFile) -> Path:
        return self.folder / f.path

    def incomplete(self, f: LockedFile) -> Path:
        return self.storage / "blobs" / (f.etag + INCOMPLETE)

    def problem(self, f: LockedFile, hashed: bool = True) -> str | None:
        """Why `f` is not in place (None: it is, with the lock's size and, when `hashed`, sha256)."""
        pointer = self.pointer(f)
        if not pointer.is_file():
            return "missing"
        size = pointer.stat().st_size
        if size != f.size:
            return f"{size} bytes, the lock says {f.size}"
        if hashed:
            got = sha256_file(pointer)
            if got != f.sha256:
                return f"sha256 {got}, the lock says {f.sha256}"
        return None

    def missing(self, hashed: bool = True) -> dict[str, str]:
        """Every locked file not in place, with why."""
        found = {f.path: self.problem(f, hashed) for f in self.repo.files}
        return {path: why for path, why in found.items() if why}

    def adopt_blob(self, f: LockedFile) -> bool:
        """A blob already in the cache (another revision shares the file) with the lock's hash: link it."""
        blob = self.blob(f)
        if blob.is_file() and not blob.is_symlink() and blob.stat().st_size == f.size and sha256_file(blob) == f.sha256:
            self._link(f)
            return True
        return False

    def place(self, f: LockedFile, written: Path) -> str | None:
        """`written` (a file beside the blobs) becomes `f`'s blob and is linked, if it has the lock's size
        and sha256; else it is removed and the reason returned. Nothing unchecked is ever placed."""
        size = written.stat().st_size
        got = sha256_file(written) if size == f.size else None
        if got != f.sha256:
            written.unlink()
            return (f"{size} bytes, the lock says {f.size}" if got is None
                    else f"sha256 {got}, the lock says {f.sha256}")
        os.replace(written, self.blob(f))
        self._link(f)
        return None

    def _link(self, f: LockedFile) -> None:
        pointer = self.pointer(f)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.blob(f), pointer.parent)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        pointer.symlink_to(target)

    def plain_view(self, dest: Path) -> Path:
        """The snapshot as plain files (hard links to the blobs, copies across file systems) in `dest`: the
        datasets library follows a snapshot's links to blob names without suffixes, so an image folder read
        through them has neither images nor metadata.jsonl (0 examples, then `--caption_column' value 'text'
        needs to be one of: image`)."""
        shutil.rmtree(dest, ignore_errors=True)
        for f in self.repo.files:
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.blob(f), target)
            except OSError:
                shutil.copyfile(self.blob(f), target)
        return dest
