"""The versioned record of what sd-env did in a home folder (state.json).

Written atomically (temp file + rename) so an interrupted run never leaves
half a record. Observed facts (what is on disk) always win over the record;
the record holds what cannot be observed: where a source came from, the
commit recorded on first clone, and which patches were applied on what.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VERSION = 1


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
class State:
    components: dict[str, ComponentState] = field(default_factory=dict)
    wheels: dict[str, str] = field(default_factory=dict)  # wheel file name -> sha256 seen on first use

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "components": {k: asdict(v) for k, v in self.components.items()},
                "wheels": self.wheels}


def load(path: Path) -> State:
    if not path.exists():
        return State()
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("version") != VERSION:
        # An unknown record is not trusted: observed facts are re-derived.
        return State()
    comps = {}
    for name, raw in data.get("components", {}).items():
        patches = [AppliedPatch(**p) for p in raw.pop("patches", [])]
        comps[name] = ComponentState(**raw, patches=patches)
    return State(comps, dict(data.get("wheels", {})))


def save(state: State, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(state.to_json(), out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)
