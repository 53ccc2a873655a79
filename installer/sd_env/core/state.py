"""The versioned record of what sd-env did in a home folder (state.json).

Written atomically (fsutil) so an interrupted run never leaves half a
record. A record from a newer sd-env or a damaged one is an error naming the
file, never read as empty and then overwritten. Observed facts (what is on disk) always win over the record;
the record holds what cannot be observed: where a source came from, the
commit recorded on first clone, and which patches were applied on what.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sd_env.errors import InputError
from sd_env.system import faults, fsutil

VERSION = 1
UPGRADE = "upgrade sd-env (`pip install -U sd-env`, or re-run ./bootstrap.sh from a newer checkout)"


@dataclass
class AppliedPatch:
    name: str
    sha256: str
    commit: str  # the checkout commit it was applied on


@dataclass
class ComponentState:
    source: str  # "git" or "sdist"
    tag: str
    commit: str  # the checkout's HEAD (for an sdist: the local import commit)
    recorded_commit: bool = False  # the commit was not in the manifest; recorded on first clone
    sdist_sha256: str | None = None
    patches: list[AppliedPatch] = field(default_factory=list)
    version: str = ""  # the release version the checkout holds


@dataclass
class BundleRecord:
    """The offline bundle the environment was last installed from (a report names it)."""

    id: str  # sha256 of the bundle's index.json
    path: str  # the bundle folder
    installed: str  # when the install from it finished (UTC, ISO 8601)
    anchored: str = "none"  # how the bundle was anchored: "id", "signature", "id and signature", "none"


@dataclass
class State:
    components: dict[str, ComponentState] = field(default_factory=dict)
    wheels: dict[str, str] = field(default_factory=dict)  # wheel file name -> sha256 seen on first use
    bundle: BundleRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "components": {k: asdict(v) for k, v in self.components.items()},
                "wheels": self.wheels, "bundle": asdict(self.bundle) if self.bundle else None}


def utc_now() -> str:
    """Now in UTC, ISO 8601 to the second (2026-12-05T09:30:00+00:00): what reports and records carry."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_record(path: Path, version: int, what: str, fix: str) -> dict[str, Any] | None:
    """A versioned JSON record; None when absent. Damage and unknown versions are InputErrors naming `path`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what}: {exc.strerror}", fix) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        how = "empty" if not raw.strip() else "corrupt or truncated"
        raise InputError(f"{path}: the {what} is {how} ({exc})", fix) from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: the {what} is corrupt (not a JSON object)", fix)
    found = data.get("version")
    if isinstance(found, int) and not isinstance(found, bool) and found > version:
        raise InputError(f"{path}: the {what} has version {found}, written by a newer sd-env "
                         f"(this one reads version {version})", UPGRADE)
    if found != version:
        raise InputError(f"{path}: the {what} has an unknown version {found!r} (this sd-env reads {version})",
                         fix)
    return data


def fix_for(path: Path) -> str:
    return (f"move {path} aside and run `sd-env install`: it re-derives the record from the checkouts "
            "(the sdist and wheel checksums are recorded again)")


def load(path: Path) -> State:
    data = read_record(path, VERSION, "sd-env state record", fix_for(path))
    if data is None:
        return State()
    try:
        comps = {}
        for name, raw in data.get("components", {}).items():
            patches = [AppliedPatch(**p) for p in raw.pop("patches", [])]
            comps[name] = ComponentState(**raw, patches=patches)
        got = data.get("bundle")
        return State(comps, dict(data.get("wheels", {})), BundleRecord(**got) if got else None)
    except (TypeError, AttributeError, ValueError) as exc:
        raise InputError(f"{path}: the sd-env state record is corrupt ({exc})", fix_for(path)) from None


def save(state: State, path: Path) -> None:
    fsutil.write_atomic(path, json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")
    faults.point("state-saved")
