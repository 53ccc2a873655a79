"""Patch files and patch series on a git work tree.

A series is judged against a *computed* result, never by trial on the
checkout: `git apply --cached` into a temporary index gives the tree the
series should produce, and each changed path of the work tree is compared
with it. So "already applied", "half applied by an interrupted run" and
"edited by someone" are told apart without writing anything, and the one
write (`git apply` of the whole series) is all-or-nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from unidiff import PatchSet
from unidiff.errors import UnidiffParseError

from sd_env.errors import CommandError, InputError, PatchConflict
from sd_env.system import faults, gitcmd
from sd_env.system.runner import Runner

FAILED_HUNK = re.compile(r"^error: patch failed: (.+):(\d+)$", re.M)  # git apply's line for a hunk that fails
_HEADER = re.compile(r"^([A-Z][A-Za-z-]+):\s?(.*)$")


@dataclass(frozen=True)
class Hunk:
    source_start: int
    source_length: int
    section: str  # the function/class line git prints after @@


@dataclass(frozen=True)
class FileChange:
    path: str
    added: bool
    removed: bool
    hunks: tuple[Hunk, ...]


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path
    text: str
    sha256: str
    header: dict[str, str]
    files: tuple[FileChange, ...]


@dataclass(frozen=True)
class SeriesState:
    """What the work tree holds, relative to HEAD and to HEAD + the series."""

    kind: str  # "unapplied" | "applied" | "partial" | "edited"
    edited: tuple[str, ...] = ()  # paths that match neither HEAD nor the patched result
    changed: tuple[str, ...] = ()  # every path that differs from HEAD


def load(path: Path) -> Patch:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text diff (binary or not UTF-8)",
                         "binary changes cannot be patched; regenerate it with `git diff --full-index`") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Patch:
    """A patch from its text; `path` is where it lives (or will)."""
    try:
        parsed = PatchSet(text)
    except UnidiffParseError as exc:
        raise InputError(f"{path}: not a unified diff ({exc})",
                         "regenerate it with `git diff --full-index`") from None
    if not parsed:
        raise InputError(f"{path}: contains no diff", "regenerate it with `git diff --full-index`")
    files = []
    for pf in parsed:
        for raw in (pf.source_file, pf.target_file):
            _check_path(path, raw)
        hunks = tuple(Hunk(h.source_start, h.source_length, h.section_header) for h in pf)
        files.append(FileChange(pf.path, pf.is_added_file, pf.is_removed_file, hunks))
    return Patch(path.name, path, text, hashlib.sha256(text.encode()).hexdigest(),
                 parse_header(text), tuple(files))


def parse_header(text: str) -> dict[str, str]:
    header: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith(("diff --git", "--- ")):
            break
        match = _HEADER.match(line)
        if match:
            key = match.group(1)
            header[key] = match.group(2).strip()
        elif key and line.startswith(" "):
            header[key] = (header[key] + " " + line.strip()).strip()
    return header


def _check_path(patch: Path, raw: str) -> None:
    if raw == "/dev/null":
        return
    rel = raw[2:] if raw.startswith(("a/", "b/")) else raw
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in parts or not parts:
        raise InputError(f"{patch}: refuses to touch {raw!r}, a path outside the checkout",
                         "a patch may only name paths inside its component's tree")


def check_inside(repo: Path, patch: Patch) -> None:
    """Refuse a patch whose target passes through a symlink that leaves the checkout."""
    root = repo.resolve()
    for change in patch.files:
        here = repo
        for part in PurePosixPath(change.path).parts:
            here = here / part
            if here.is_symlink():
                target = here.resolve()
                if target != root and root not in target.parents:
                    raise InputError(
                        f"{patch.path}: {change.path} goes through the symlink {here} "
                        f"to {target}, outside the checkout",
                        "remove the symlink from the checkout or the file from the patch")


def missing_targets(runner: Runner, repo: Path, patch: Patch) -> list[str]:
    """Files the patch modifies that this tree does not have (e.g. examples/ in an sdist)."""
    wanted = [c.path for c in patch.files if not c.added]
    if not wanted:
        return []
    present = set(gitcmd.out(runner, repo, "ls-tree", "-r", "--name-only", "HEAD", "--",
                             *wanted).splitlines())
    return [p for p in wanted if p not in present]


def expected_tree(runner: Runner, repo: Path, patches: list[Patch]) -> str:
    """The tree HEAD + series gives; PatchConflict (naming patch, file, hunk) if it does not apply."""
    with _temp_index(repo) as env:
        gitcmd.git(runner, repo, "read-tree", "HEAD", env=env)
        try:
            _apply(runner, repo, patches, "--cached", env=env)
        except CommandError as exc:
            raise conflict(runner, repo, patches, exc) from None
        return gitcmd.out(runner, repo, "write-tree", env=env)


def observe(runner: Runner, repo: Path, patches: list[Patch]) -> SeriesState:
    changed = gitcmd.changed_paths(runner, repo)
    if not patches:  # the expected tree is HEAD's: any change is an edit
        return SeriesState("edited", tuple(changed), tuple(changed)) if changed else SeriesState("applied")
    result = expected_tree(runner, repo, patches)
    if not changed:
        return SeriesState("unapplied")
    patched = set(gitcmd.out(runner, repo, "diff", "--name-only", "HEAD", result).splitlines())
    head_blobs = _blobs(runner, repo, "HEAD", changed)
    want_blobs = _blobs(runner, repo, result, changed)
    have_blobs = _worktree_blobs(runner, repo, changed)
    edited = []
    all_patched = True
    for path in changed:
        have = have_blobs.get(path)
        if path in patched and have == want_blobs.get(path):
            continue
        all_patched = False
        # A deleted file holds no edit of the user's: putting it back loses nothing, so it
        # is damage to repair (a "partial" tree), not an edit to protect.
        if have is not None and not (path in patched and have == head_blobs.get(path)):
            edited.append(path)
    if edited:
        return SeriesState("edited", tuple(edited), tuple(changed))
    if all_patched and set(changed) == patched:
        return SeriesState("applied", changed=tuple(changed))
    return SeriesState("partial", changed=tuple(changed))


def apply(runner: Runner, repo: Path, patches: list[Patch]) -> None:
    """Write the whole series to the work tree, or nothing.

    `git apply` with several files writes each in turn, so the series is
    first checked as a whole in a temporary index; if a write still fails
    (the disk, say), what was written is put back.
    """
    for patch in patches:
        check_inside(repo, patch)
    expected_tree(runner, repo, patches)  # raises PatchConflict before anything is written
    written: list[str] = []
    try:
        for patch in patches:
            if written:
                faults.point("half-patched")
            written += [c.path for c in patch.files]
            _apply(runner, repo, [patch])
    except CommandError as exc:
        restore(runner, repo, sorted(set(written)))
        raise conflict(runner, repo, patches, exc) from None


def restore(runner: Runner, repo: Path, paths: list[str]) -> None:
    """Put `paths` back to HEAD (used only on paths a series wrote)."""
    in_head = set(gitcmd.out(runner, repo, "ls-tree", "-r", "--name-only", "HEAD", "--",
                             *paths).splitlines())
    tracked = [p for p in paths if p in in_head]
    if tracked:
        gitcmd.git(runner, repo, "checkout", "HEAD", "--", *tracked)
    for p in paths:
        if p not in in_head:
            (repo / p).unlink(missing_ok=True)


def conflict(runner: Runner, repo: Path, patches: list[Patch], exc: CommandError) -> PatchConflict:
    """Name the first patch of the series that fails, with its file and hunk."""
    with _temp_index(repo) as env:
        gitcmd.git(runner, repo, "read-tree", "HEAD", env=env)
        for patch in patches:
            try:
                _apply(runner, repo, [patch], "--cached", env=env)
            except CommandError as err:
                return PatchConflict(
                    f"{patch.name} does not apply to {repo}: {_where(patch, err.output)}",
                    "the checkout was left as it was; run `sd-env repatch` to port the patch, "
                    "or fix the patch file")
    return PatchConflict(f"the patch series does not apply to {repo}: {exc.output.strip()}",
                         "the checkout was left as it was")


def _where(patch: Patch, output: str) -> str:
    match = FAILED_HUNK.search(output)
    if not match:
        return output.strip().splitlines()[-1] if output.strip() else "git apply failed"
    path, line = match.group(1), int(match.group(2))
    for change in patch.files:
        if change.path != path:
            continue
        for i, hunk in enumerate(change.hunks, 1):
            if hunk.source_start == line:
                at = f" ({hunk.section.strip()})" if hunk.section.strip() else ""
                return f"{path}: hunk #{i} at line {line}{at} does not match"
    return f"{path}: the hunk at line {line} does not match"


def _apply(runner: Runner, repo: Path, patches: list[Patch], *flags: str,
           env: dict[str, str] | None = None) -> None:
    if not patches:
        return
    gitcmd.git(runner, repo, "apply", "--whitespace=nowarn", *flags,
               *[str(p.path.resolve()) for p in patches], env=env)


def _blobs(runner: Runner, repo: Path, tree: str, paths: list[str]) -> dict[str, str]:
    listing = gitcmd.git(runner, repo, "ls-tree", "-r", "-z", tree, "--", *paths).stdout
    blobs = {}
    for entry in listing.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            blobs[path] = meta.split()[2]
    return blobs


def _worktree_blobs(runner: Runner, repo: Path, paths: list[str]) -> dict[str, str]:
    present = [p for p in paths if (repo / p).is_file()]
    if not present:
        return {}
    ids = gitcmd.out(runner, repo, "hash-object", "--", *present).splitlines()
    return dict(zip(present, ids))


class _temp_index:
    """A throw-away GIT_INDEX_FILE, so the checkout's own index is never touched."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo

    def __enter__(self) -> dict[str, str]:
        fd, self.path = tempfile.mkstemp(prefix="sd-env-index-", dir=self.repo / ".git")
        os.close(fd)
        os.unlink(self.path)  # git wants to create it itself
        return {"GIT_INDEX_FILE": self.path}

    def __exit__(self, *exc: object) -> None:
        for leftover in (self.path, self.path + ".lock"):
            if os.path.exists(leftover):
                os.unlink(leftover)
