"""Shipped ports: hand-made patches for later releases, next to the original one.

A patch `accelerate-0.16.0-tpu.diff` may have siblings `accelerate-0.20.0-tpu.diff`,
`accelerate-0.30.0-tpu.diff`, ...: each is the same change written by hand for the
releases from the one in its name on (where upstream rewrote the code it touches).
When the plain port of a patch conflicts, `sd-env repatch` takes the newest
shipped port that is not newer than the target release and applies cleanly.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from packaging.version import InvalidVersion, Version

from sd_env import gitcmd, patches, port
from sd_env.runner import Runner


def candidates(patch: Path, version_in_name: str, to_version: str) -> list[Path]:
    """Siblings of `patch` named like it with another release, newest first, none newer than `to_version`."""
    if not version_in_name or version_in_name not in patch.name:
        return []
    head, tail = patch.name.split(version_in_name, 1)
    pattern = re.compile(re.escape(head) + r"(\d[^-/]*?)" + re.escape(tail) + "$")
    target = Version(to_version)
    found: list[tuple[Version, Path]] = []
    for sibling in patch.parent.iterdir():
        match = pattern.match(sibling.name)
        if not match or sibling == patch:
            continue
        try:
            release = Version(match.group(1))
        except InvalidVersion:
            continue
        if release <= target:
            found.append((release, sibling))
    return [path for _, path in sorted(found, reverse=True)]


def named_for(patch: Path, version_in_name: str, to_version: str, found: list[Path] | None = None) -> Path | None:
    """The shipped port named for exactly `to_version`, if there is one: taken before any plain port,
    which would otherwise be written over it under the same name. `found`: the candidates, when
    the caller has listed them."""
    found = candidates(patch, version_in_name, to_version) if found is None else found
    if found and found[0].name == patch.name.replace(version_in_name, to_version, 1):
        return found[0]
    return None


def take_shipped(runner: Runner, work: Path, shipped: list[Path]) -> port.PortResult | None:
    """Reset the work tree to its last commit and apply the first of `shipped` that fits exactly
    (offsets allowed); None when none fits, with the work tree reset."""
    for path in shipped:
        clean(runner, work)
        got = port.port(runner, work, patches.load(path), blobs_from=None)
        if got.method in (port.EXACT, port.OFFSET):
            return port.PortResult(got.patch, port.SHIPPED, f"took the shipped port {path.name} "
                                   f"({got.method}: {got.detail})")
    clean(runner, work)
    return None


def clean(runner: Runner, work: Path) -> None:
    """Drop a failed port's conflict markers, .rej and .orig files: back to the work tree's HEAD."""
    gitcmd.git(runner, work, "reset", "-q", "--hard", "HEAD")
    gitcmd.git(runner, work, "clean", "-q", "-f", "-d")
    for leftover in list(work.rglob("*.rej")) + list(work.rglob("*.orig")):
        if leftover.is_file():
            leftover.unlink()
        else:
            shutil.rmtree(leftover)
