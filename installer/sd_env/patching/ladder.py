"""Shipped ports: hand-made patches for later releases, next to the original one.

A patch `accelerate-0.16.0-tpu.diff` may have siblings `accelerate-0.20.0-tpu.diff`,
`accelerate-0.30.0-tpu.diff`, ...: each is the same change written by hand for the
releases from the one in its name on (where upstream rewrote the code it touches).
The siblings are found by the release in the file's own name, never by the release
the checkout holds: after `repatch --to accelerate==0.22.0` the series is the shipped
`accelerate-0.21.0-tpu.diff`, and the next jump must still see its siblings.

`choose` is the order `sd-env repatch` follows for one patch: the shipped port named
for the target; else, when a sibling nearer to the target than the current patch
exists (a jump between rungs or past the ladder), that nearest rung as it is, else
its plain port (3-way from its own release's pre-image); else the plain port of the
patch itself. When the plain port conflicts, the newest older shipped port that fits.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from sd_env.patching import patches, port
from sd_env.system import gitcmd
from sd_env.system.runner import Runner

# A release in a file name: digits with dots, between dashes (or before the extension).
_IN_NAME = re.compile(r"(?<=-)(\d+(?:\.\d+)+)(?=-|\.[a-z]+$)")


def version_in_name(name: str, hint: str = "") -> str:
    """The release a patch file's name carries: the dotted number between dashes that is `hint`,
    else the first one; "" when there is none."""
    found = _IN_NAME.findall(name)
    if hint in found:
        return hint
    return found[0] if found else ""


def renamed(name: str, to_version: str, hint: str = "") -> str:
    """The name of the same patch made for `to_version`."""
    version = version_in_name(name, hint)
    if version:
        return re.sub(r"(?<=-)" + re.escape(version) + r"(?=-|\.[a-z]+$)", to_version, name, count=1)
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{to_version}.{ext}" if dot else f"{name}-{to_version}"


def siblings(patch: Path, hint: str = "") -> list[tuple[Version, Path]]:
    """Every patch file named like `patch` with another release (`patch` included), newest first."""
    version = version_in_name(patch.name, hint)
    if not version:
        return []
    at = re.search(r"(?<=-)" + re.escape(version) + r"(?=-|\.[a-z]+$)", patch.name)
    assert at is not None
    head, tail = patch.name[:at.start()], patch.name[at.end():]
    pattern = re.compile(re.escape(head) + r"(\d[^-/]*?)" + re.escape(tail) + "$")
    found: list[tuple[Version, Path]] = []
    for sibling in patch.parent.iterdir():
        match = pattern.match(sibling.name)
        if not match:
            continue
        try:
            found.append((Version(match.group(1)), sibling))
        except InvalidVersion:
            continue
    return sorted(found, reverse=True)


def candidates(patch: Path, hint: str, to_version: str) -> list[Path]:
    """Siblings of `patch` (not itself), newest first, none newer than `to_version`."""
    target = Version(to_version)
    return [path for release, path in siblings(patch, hint) if release <= target and path != patch]


def named_for(patch: Path, hint: str, to_version: str, found: list[Path] | None = None) -> Path | None:
    """The shipped port named for exactly `to_version`, if there is one: taken before any plain port,
    which would otherwise be written over it under the same name. `found`: the candidates, when
    the caller has listed them."""
    found = candidates(patch, hint, to_version) if found is None else found
    if found and found[0].name == renamed(patch.name, to_version, hint):
        return found[0]
    return None


def nearest(patch: Path, hint: str, to_version: str) -> Path:
    """The rung a port to `to_version` starts from: the newest sibling not newer than the target
    (`patch` itself when it is that one, or when there is none)."""
    target = Version(to_version)
    below = [path for release, path in siblings(patch, hint) if release <= target]
    return below[0] if below else patch


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


@dataclass(frozen=True)
class Choice:
    result: port.PortResult
    start: Path  # the file the port started from: the patch itself, or the nearest rung below the target


PlainPort = Callable[[patches.Patch], port.PortResult]


def choose(runner: Runner, work: Path, patch: patches.Patch, hint: str, to_version: str,
           plain: PlainPort) -> Choice:
    """Port `patch` into the work tree `work` in the order of the module's docstring.
    `plain(p)` is the caller's plain port of p (exact, offset, 3-way, fuzz as asked)."""
    shipped = candidates(patch.path, hint, to_version)
    exact = named_for(patch.path, hint, to_version, shipped)
    got = take_shipped(runner, work, [exact]) if exact else None
    if got is not None:
        return Choice(got, exact or patch.path)
    start = nearest(patch.path, hint, to_version)
    others = [p for p in shipped if p != exact]  # the exact one, if any, was tried first
    if start != patch.path:
        # A rung nearer to the target than the patch: as it is, else its plain port (3-way from its own
        # pre-image), and only when that fails an older shipped port that fits: the nearest rung is the
        # change maintained for this range; an older one may lack what the nearer one added.
        got = take_shipped(runner, work, [start]) if start != exact else None
        if got is not None:
            return Choice(got, start)
        start_patch = patches.load(start)
        got = plain(start_patch)
        older = [p for p in others if p != start]
        if got.method in (port.CONFLICT, port.GONE) and older:
            got = take_shipped(runner, work, older) or plain(start_patch)
        return Choice(got, got.patch.path if got.method == port.SHIPPED else start)
    got = plain(patch)
    if got.method in (port.CONFLICT, port.GONE) and others:
        # The plain port conflicts (markers, no pre-image to merge from, a check that failed, or a
        # hunk whose target is gone): the newest shipped port that fits this release, else the plain
        # port again (taking a shipped port resets the work tree).
        got = take_shipped(runner, work, others) or plain(patch)
    return Choice(got, patch.path)


def clean(runner: Runner, work: Path) -> None:
    """Drop a failed port's conflict markers, .rej and .orig files: back to the work tree's HEAD."""
    gitcmd.git(runner, work, "reset", "-q", "--hard", "HEAD")
    gitcmd.git(runner, work, "clean", "-q", "-f", "-d")
    for leftover in list(work.rglob("*.rej")) + list(work.rglob("*.orig")):
        if leftover.is_file():
            leftover.unlink()
        else:
            shutil.rmtree(leftover)
