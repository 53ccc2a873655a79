"""A managed checkout: the commit it is pinned to, the patches its source can take, and the
record of the series applied to it. Shared by install, status and repatch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sd_env.core import state
from sd_env.core.manifest import Component
from sd_env.errors import PatchConflict
from sd_env.patching import patches
from sd_env.system.runner import Runner

APPLIED_DIR = Path(".git") / "sd-env" / "applied"  # copies of the applied series, inside the checkout


def pinned_commit(comp: Component, rec: state.ComponentState | None) -> str | None:
    if rec is not None and (rec.source == "sdist" or comp.commit is None):
        return rec.commit
    return comp.commit


def applicable(runner: Runner, comp: Component, checkout: Path,
               source: str) -> tuple[list[patches.Patch], list[tuple[patches.Patch, list[str]]]]:
    """The component's patches this source can take, and the others with their missing targets.

    Only an sdist may lack a patch's target (diffusers' examples/ is not in
    it); from git, a missing target means the patch does not fit the tag.
    """
    series: list[patches.Patch] = []
    skipped: list[tuple[patches.Patch, list[str]]] = []
    for path in comp.patches:
        patch = patches.load(path)
        patches.check_inside(checkout, patch)
        missing = patches.missing_targets(runner, checkout, patch)
        if missing and source != "sdist":
            raise PatchConflict(f"{patch.name} changes {', '.join(missing)}, which {comp.tag} does not have",
                                "the checkout was left as it was; fix the patch or the manifest's tag")
        if missing:
            skipped.append((patch, missing))
        else:
            series.append(patch)
    return series, skipped


def record_applied(checkout: Path, series: list[patches.Patch], rec: state.ComponentState, head: str) -> None:
    """Remember an applied series: its sha256s in the state, and copies inside the checkout so a
    later change of the patch files can be reverted exactly."""
    copies = checkout / APPLIED_DIR
    shutil.rmtree(copies, ignore_errors=True)
    copies.mkdir(parents=True)
    for i, patch in enumerate(series):
        (copies / f"{i:02d}-{patch.name}").write_text(patch.text, encoding="utf-8")
    rec.patches = [state.AppliedPatch(p.name, p.sha256, head) for p in series]
