"""Replace a component that came from its PyPI sdist by its git tag, once git is reachable.

An sdist has the library code of the tag but not the files around it
(diffusers' examples/, hence no training script). When the user gives a git
mirror (`sd-env install --git-mirror PREFIX`), `install` swaps such a checkout
for a clone of the tag: fetched and verified in scratch space first, so an
unreachable mirror or a moved tag leaves the sdist checkout as it was, and
local edits in it are never thrown away. The editable install keeps pointing at
the same folder; the patch step that follows re-applies the whole series.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sd_env.core import state
from sd_env.core.manifest import Component
from sd_env.errors import CommandError, StepError
from sd_env.patching import patches, sources
from sd_env.report import OK, WARN, Result, progress
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner


def swap(comp: Component, paths: Paths, runner: Runner, mirror: str,
         rec: state.ComponentState, applied: list[patches.Patch]) -> tuple[state.ComponentState, Result]:
    """The new record and a result; the old record and a warning when git is still out of reach.

    `applied` is the series the sdist checkout can take: the tree must be exactly
    that series (or nothing), else it holds local edits and is left alone.
    """
    checkout = paths.checkout(comp.name)
    seen = patches.observe(runner, checkout, applied)
    if seen.kind == "edited":
        raise StepError(f"{comp.name}: {checkout} (from the sdist) has local edits in {', '.join(seen.edited)}; "
                        "not replacing it by the git checkout",
                        f"keep them with `git -C {checkout} diff > my-edits.diff`, discard them with "
                        f"`git -C {checkout} checkout -- .`, then run again")
    progress(f"{comp.name}: came from its PyPI sdist; fetching {comp.tag} from the git mirror to replace it")
    paths.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{comp.name}-git-", dir=paths.work))
    try:
        try:
            got = sources.fetch_git(comp, scratch / "checkout", paths.work, runner, mirror=mirror,
                                    expect=comp.commit)
        except CommandError as exc:
            if not sources.unreachable(exc):
                raise
            url = sources.mirror_url(comp.git, mirror)
            return rec, Result(comp.name, "fetch", WARN, f"git still cannot reach {url}: kept the sdist checkout")
        os.replace(checkout, scratch / "old")  # same filesystem: both under the home
        os.replace(scratch / "checkout", checkout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    new = state.ComponentState("git", comp.tag, got.commit, recorded_commit=comp.commit is None,
                               version=comp.version)
    return new, Result(comp.name, "fetch", OK, f"replaced the sdist checkout by git {comp.tag} at "
                       f"{got.commit[:12]} from {got.url}")
