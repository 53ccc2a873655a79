"""What finishing a repatch writes: the refreshed patch files and the manifest's new text.

A port's diff becomes a patch file next to the one it was ported from, named for the new release,
its header kept (Upstream-Version and Last-Update updated, Ported-From added, the hunks dropped as
no longer needed named); a diff equal to an existing file made for that release reuses that file.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sd_env.core import manifest_edit
from sd_env.core.manifest import Component
from sd_env.patching import ladder, patches
from sd_env.system import gitcmd
from sd_env.system.runner import Runner

if TYPE_CHECKING:
    from sd_env.workflows.repatch import Session


Outputs = tuple[list[tuple[Path, str]], list[Path], str]


def outputs(manifest: Path, comp: Component, runner: Runner, session: Session) -> Outputs:
    """What finishing writes: the refreshed patch files (path, text; empty text: an existing file with
    the same change is reused), the new series in order, and the manifest's new text."""
    work = Path(session.work)
    files: list[tuple[Path, str]] = []
    series: list[Path] = []
    parent = session.base
    for done in session.done:
        if not done["commit"]:
            continue  # obsolete upstream: dropped from the series
        if done.get("shipped"):
            series.append(Path(done["path"]))  # used as shipped, not rewritten: it is the maintained file
            parent = done["commit"]
            continue
        old = patches.load(Path(done["path"]))
        new_path = old.path.with_name(ladder.renamed(old.name, session.to_version, session.from_version))
        if not work.exists():
            series.append(new_path)  # an interrupted finish already wrote the patches and moved the work tree
            continue
        # Not gitcmd.out: stripping would cut a trailing blank context line off the diff.
        diff = gitcmd.git(runner, work, "diff", "--full-index", parent, done["commit"]).stdout
        parent = done["commit"]
        same = same_change(diff, [old.path, new_path, *sorted(old.path.parent.iterdir())], session)
        if same is not None:
            series.append(same)  # going back to a release a patch file was made for: no duplicate
            continue
        text = new_header(old, session, done["method"], done.get("dropped", [])) + "\n" + diff
        patches.parse(text, new_path)  # a refreshed patch that does not parse must not replace anything
        files.append((new_path, text))
        series.append(new_path)
    commit = session.to_commit if session.source == "git" else None
    manifest_text = manifest_edit.updated_text(manifest, comp.name, tag=session.to_tag, version=session.to_version,
                                               commit=commit, patches=[p.name for p in series],
                                               pending=frozenset(p.name for p, _ in files))
    return files, series, manifest_text


def same_change(diff: str, candidates: list[Path], session: Session) -> Path | None:
    """The first candidate patch file made for the target release whose diff (its header aside) is `diff`."""
    want = _body(diff)
    for path in candidates:
        if path.suffix not in (".diff", ".patch") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        # Made for the target: its Upstream-Version names the tag, or (no such header) its name the version.
        made_for = patches.parse_header(text).get("Upstream-Version")
        fits = session.to_tag in made_for.split() if made_for else session.to_version in path.name
        if fits and _body(text) == want:
            return path
    return None


def _body(text: str) -> str:
    at = text.find("diff --git")
    return (text[at:] if at >= 0 else text).rstrip()


def new_header(old: patches.Patch, session: Session, method: str, dropped: list[str]) -> str:
    header_text = old.text.split("diff --git", 1)[0].rstrip("\n")
    today = datetime.date.today().isoformat()
    upstream = f"{session.component} {session.to_tag}" + (
        f" ({session.to_commit})" if session.source == "git" else f" (PyPI sdist, sha256 {session.sdist_sha256})")
    header_text = _set_field(header_text, "Upstream-Version", upstream)
    header_text = _set_field(header_text, "Last-Update", today)
    header_text = _set_field(header_text, "Ported-From", f"{old.name} ({method}, by sd-env repatch)")
    if dropped:
        header_text = _set_field(header_text, "Dropped", f"{'; '.join(dropped)} of {old.name}: no longer needed "
                                 "(proven on the emulated device)")
    return header_text + "\n"


def _set_field(text: str, key: str, value: str) -> str:
    pattern = re.compile(rf"^{re.escape(key)}:.*$", re.M)
    if pattern.search(text):
        return pattern.sub(f"{key}: {value}", text, count=1)
    return text + f"\n{key}: {value}"
