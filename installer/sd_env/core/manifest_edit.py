"""Rewrite one [[component]] of a manifest file, keeping the user's comments and layout.

tomlkit edits the parsed document in place (arrays written one item a line,
inline comments and the order of keys all survive), and the result is parsed
again by the manifest loader before it replaces the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import tomlkit
from tomlkit.exceptions import TOMLKitError

from sd_env.core import manifest
from sd_env.core.manifest import tomllib  # the same TOML reader the loader uses
from sd_env.errors import InputError, ManifestError
from sd_env.system import fsutil


def updated_text(path: Path, name: str, *, tag: str, version: str, commit: str | None,
                 patches: list[str], pending: frozenset[str] = frozenset()) -> str:
    """The manifest's text with component `name` moved to `tag`/`version`/`commit` and `patches`;
    `pending` names patch files not written yet."""
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, TOMLKitError) as exc:
        raise ManifestError(path, "", f"cannot be edited: {exc}", "fix the file so `sd-env status` reads it") from None
    comp = next((c for c in doc.get("component", []) if c.get("name") == name), None)
    if comp is None:
        raise InputError(f"{path}: no [[component]] named {name!r}", "name a component of the manifest")
    comp["tag"] = tag
    comp["version"] = version
    if commit:
        comp["commit"] = commit
    elif "commit" in comp:
        del comp["commit"]
    if patches or "patches" in comp:
        old = comp.get("patches")
        new = tomlkit.array()
        new.extend(patches)
        # Keep the user's choice of one item a line.
        new.multiline(old is not None and "\n" in old.as_string())
        comp["patches"] = new
    text = tomlkit.dumps(doc)
    manifest.parse(tomllib.loads(text), path, pending)  # never write a manifest that does not load
    return text


def add_lock_file(path: Path, flavour: str, lock: Path) -> None:
    """Register `lock` as the manifest's [lock.files] entry for `flavour`."""
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
        doc["lock"].setdefault("files", tomlkit.table())[flavour] = os.path.relpath(lock, path.parent)
    except (OSError, UnicodeDecodeError, TOMLKitError, KeyError) as exc:
        raise ManifestError(path, "lock.files", f"cannot be edited: {exc}",
                            f'add {flavour} = "{lock.name}" to [lock.files] by hand') from None
    text = tomlkit.dumps(doc)
    manifest.parse(tomllib.loads(text), path)
    fsutil.write_atomic(path, text)

