"""`pip check`'s judgement, computed from an inventory instead of a second pip process.

For every installed distribution, each of its requirements (Requires-Dist)
whose marker holds in the target, without extras, must be installed at a
version its specifier allows (pre-releases included, as pip check does).
The messages are pip check's own, so a reader who knows pip recognises them.
Pure: the inventory probe collected the requirements and the target's marker
environment; nothing here runs a process.
"""

from __future__ import annotations

from packaging.markers import InvalidMarker, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from sd_env.target.envs import Inventory


def broken(inv: Inventory) -> list[str]:
    """pip check's lines for `inv`: missing and conflicting requirements, sorted."""
    markers = inv.markers
    have: dict[str, str] = {}
    for name, entries in inv.dists.items():
        have.setdefault(canonicalize_name(name), entries[0]["version"])
    problems = set()
    for name, entries in inv.dists.items():
        entry = entries[0]  # the copy Python imports first (shadowing is reported by the pins check)
        for text in entry.get("requires") or []:
            try:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate({**markers, "extra": ""}):
                    continue
            except (InvalidRequirement, InvalidMarker, UndefinedEnvironmentName):
                continue  # pip check skips what it cannot parse as well
            dep = canonicalize_name(req.name)
            own = f"{canonicalize_name(name)} {entry['version']}"  # pip check names by canonical names
            if dep not in have:
                problems.add(f"{own} requires {dep}, which is not installed.")
                continue
            try:
                fits = req.specifier.contains(Version(have[dep]), prereleases=True)
            except InvalidVersion:
                fits = False
            if not fits:
                problems.add(f"{own} has requirement {req}, but you have {dep} {have[dep]}.")
    return sorted(problems)
