"""What a component still needs: a pure function of what was observed."""

from __future__ import annotations

from dataclasses import dataclass

from sd_env.patching.patches import SeriesState
from sd_env.target.installed import Installed

FETCH, CHECKOUT, RESTORE, PATCH, BUILD = "fetch", "checkout", "restore", "patch", "build"


@dataclass(frozen=True)
class Observed:
    head: str | None  # the checkout's commit, None when there is no checkout
    pinned: str | None  # the manifest's commit, else the one recorded on first clone
    series: SeriesState | None  # None when not observed (no checkout, or not at the pin)
    installed: Installed | None  # None when the distribution is absent from the target
    checkout_uri: str


def plan(obs: Observed) -> list[str]:
    """Steps in order. A finished component plans nothing, so a re-run does nothing."""
    if obs.head is None:
        return [FETCH, PATCH, BUILD]
    steps = []
    if obs.pinned is not None and obs.head != obs.pinned:
        steps += [CHECKOUT, PATCH]
    elif obs.series is None or obs.series.kind != "applied":
        if obs.series is not None and obs.series.kind == "partial":
            steps.append(RESTORE)
        steps.append(PATCH)
    inst = obs.installed
    if inst is None or not inst.editable or inst.url != obs.checkout_uri or len(inst.versions) != 1:
        steps.append(BUILD)
    return steps
