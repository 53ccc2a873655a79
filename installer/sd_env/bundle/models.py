"""The model and the dataset in an offline bundle: packed, checked against the model lock, put in place.

`bundle create --with-model` (`--with-data`) copies each locked file from the Hub cache where
`sd-env model fetch` put it to `model/PATH` (`data/PATH`), PATH being its path in the repository.
The model lock travels as a project file beside the manifest (kind "model-lock"), so the anchor
that vouches for the manifest and its lock vouches for it too (`-m` compares it byte for byte).
Whatever the index says, the lock decides: a model member must be a locked file with the lock's
sha256, and every locked file must be there. `install --bundle` copies each member into the Hub
cache (a copy of sd-env's own, hashed again, then placed as `model fetch` places a download): no
network, and the pipeline's `from_pretrained(repo, revision=...)` finds it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Protocol

from sd_env.bundle.format import DATA, MODEL, BundleError, Index, Member
from sd_env.core import hublock
from sd_env.core.hubcache import Snapshot, hub_cache
from sd_env.core.hublock import HubLock, LockedRepo
from sd_env.core.manifest import Manifest
from sd_env.errors import InputError
from sd_env.report import OK, Result, human, progress

KINDS = {"model": MODEL, "dataset": DATA}  # lock section -> member kind (and folder)


class Adder(Protocol):  # bundle_create._Members
    def add(self, rel: str, kind: str, src: Path | None = None) -> Member: ...


def add(members: Adder, man: Manifest, with_model: bool, with_data: bool) -> list[str]:
    """Pack the locked files of the chosen sections; returns what was said."""
    said = []
    for kind, wanted in (("model", with_model), ("dataset", with_data)):
        if not wanted:
            continue
        repo = hublock.for_manifest(man, kind)
        snap = Snapshot(hub_cache(), repo)
        bad = snap.missing(hashed=False)
        if bad:
            path, why = next(iter(bad.items()))
            raise InputError(f"--with-{'model' if kind == 'model' else 'data'}: the {repo.label} is not in place in "
                             f"{snap.folder} ({path}: {why})", "run `sd-env model fetch` first (same HF_HOME)")
        progress(f"copying the {repo.label}: {len(repo.files)} files, {human(repo.size)}")
        for f in repo.files:
            member = members.add(f"{KINDS[kind]}/{f.path}", KINDS[kind], snap.pointer(f))
            if member.sha256 != f.sha256:
                raise BundleError(f"{snap.pointer(f)} has sha256 {member.sha256}, the model lock says {f.sha256}",
                                  "run `sd-env model fetch` (it replaces a file that differs from the lock)")
        said.append(f"{repo.label} ({len(repo.files)} files)")
    return said


def lock_of(root: Path, index: Index, man: Manifest) -> HubLock | None:
    """The bundle's model lock (at the manifest's place for it), when the bundle carries one."""
    locks = [m for m in index.members if m.kind == "model-lock"]
    if not locks:
        return None
    rel = man.model_lock.resolve().relative_to(root.resolve()).as_posix()
    if [m.path for m in locks] != [rel]:
        raise BundleError(f"the bundle's model lock is {', '.join(m.path for m in locks)}, the manifest's is {rel}",
                          "re-create the bundle")
    return hublock.read(root / rel)


def check(root: Path, index: Index, man: Manifest) -> None:
    """Model and data members are exactly the locked files, with the lock's sha256 (the lock decides)."""
    lock = lock_of(root, index, man)
    for section, kind in KINDS.items():
        members = {m.path[len(kind) + 1:]: m for m in index.members if m.kind == kind}
        if not members:
            continue
        spec = man.model if section == "model" else man.dataset
        repo = (lock.model if section == "model" else lock.dataset) if lock is not None else None
        if repo is None or spec is None or not repo.matches(spec):
            raise BundleError(f"the bundle carries {kind}/ files, but its model lock pins no {section} of the "
                              f"manifest's [{section}]", "re-create the bundle (after `sd-env model lock`)")
        locked = {f.path: f for f in repo.files}
        for path, m in members.items():
            f = locked.get(path)
            if f is None or f.sha256 != m.sha256:
                raise BundleError(f"bundle member {m.path} is not a file the model lock pins"
                                  + (f" (sha256 {m.sha256}, the lock says {f.sha256})" if f else ""),
                                  "re-create the bundle")
        absent = sorted(set(locked) - set(members))
        if absent:
            raise BundleError(f"the bundle lacks {len(absent)} locked {section} files: {kind}/{absent[0]}",
                              "re-create the bundle with --with-model (--with-data)")


def place(root: Path, index: Index, lock: HubLock) -> list[Result]:
    """Each carried repository into the Hub cache, every file copied, hashed and checked against `lock`
    (sd-env's private copy of the bundle's checked model lock)."""
    results = []
    for section, kind in KINDS.items():
        repo = lock.model if section == "model" else lock.dataset
        if repo is not None and any(m.kind == kind for m in index.members):
            results.append(_place(root, kind, repo))
    return results


def _place(root: Path, kind: str, repo: LockedRepo) -> Result:
    started = time.monotonic()
    snap = Snapshot(hub_cache(), repo)
    placed = 0
    for f in repo.files:
        if snap.problem(f) is None:
            continue
        if not snap.adopt_blob(f):  # (a blob with the same bytes, already checked, is linked instead)
            partial = snap.incomplete(f)
            partial.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / kind / f.path, partial)  # sd-env's own copy: what is checked is what is placed
            why = snap.place(f, partial)
            if why:
                raise BundleError(f"bundle member {kind}/{f.path}: {why}; nothing of it was placed",
                                  "copy the bundle again from the original (it changed since it was checked)")
        placed += 1
    said = f"placed {placed} of {len(repo.files)} files" if placed else f"all {len(repo.files)} files already there"
    return Result(repo.kind, "place", OK, f"{repo.repo}@{repo.revision[:12]}: {said} ({human(repo.size)}), each "
                  f"checked against the model lock, no network; {snap.folder}", time.monotonic() - started)
