"""Rewrite one [[component]] of a manifest file in place, keeping comments and layout.

There is no TOML writer among sd-env's dependencies, and a writer would drop
the user's comments; the edit is line-based and the result is parsed again
before it replaces the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sd_env import manifest
from sd_env.errors import InputError
from sd_env.manifest import tomllib  # the same TOML reader the loader uses


def update_component(path: Path, name: str, *, tag: str, version: str, commit: str | None,
                     patches: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    start, end = _block(lines, name, path)
    block = lines[start:end]
    values = {"tag": _q(tag), "version": _q(version),
              "patches": "[" + ", ".join(_q(p) for p in patches) + "]"}
    block = [_set(line, values) for line in block if not _is_key(line, "commit")]
    if commit:
        at = max(i for i, line in enumerate(block) if _is_key(line, "version")) + 1
        block.insert(at, f"commit = {_q(commit)}\n")
    if not any(_is_key(line, "patches") for line in block) and patches:
        at = max(i for i, line in enumerate(block) if line.strip() and not line.lstrip().startswith("#")) + 1
        block.insert(at, f"patches = {values['patches']}\n")
    new = "".join(lines[:start] + block + lines[end:])
    manifest.parse(tomllib.loads(new), path)  # never write a manifest that does not load
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


def _block(lines: list[str], name: str, path: Path) -> tuple[int, int]:
    starts = [i for i, line in enumerate(lines) if line.strip() == "[[component]]"]
    for n, start in enumerate(starts):
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        end = min(end, starts[n + 1]) if n + 1 < len(starts) else end
        if any(_is_key(line, "name") and _q(name) in line for line in lines[start:end]):
            # Comments just above the next table belong to it, not to this block.
            while end > start and lines[end - 1].lstrip().startswith("#"):
                end -= 1
            return start, end
    raise InputError(f"{path}: no [[component]] named {name!r}", "name a component of the manifest")


def _is_key(line: str, key: str) -> bool:
    return re.match(rf"^\s*{key}\s*=", line) is not None


def _set(line: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        if _is_key(line, key):
            return f"{key} = {value}\n"
    return line


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
