"""Settings that users give once instead of on every command line.

Each key is a flag's name; its value is taken from the first of: the flag,
its environment variable, the project's sd-env.toml (beside manifests/), the
user's config.toml ($XDG_CONFIG_HOME/sd-env, else ~/.config/sd-env).
`sd-env config` shows the values in force and where each came from.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sd_env.errors import InputError
from sd_env.system import paths

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.9 target
    import tomli as tomllib

# key -> (environment variable or None, is a path: relative values are read from the file's folder)
KEYS = {
    "git-mirror": ("SD_ENV_GIT_MIRROR", True),
    "torch-tpu-wheel": ("SD_ENV_TORCH_TPU_WHEEL", True),
    "index-url": (None, False),
    # A mirror of the standalone CPython builds uv downloads when the machine has no Python of the
    # stack's version (pythons.py); uv's own variable, so uv and `sd-env config` agree on it.
    "python-mirror": ("UV_PYTHON_INSTALL_MIRROR", True),
}


@dataclass(frozen=True)
class Setting:
    key: str
    value: str | None
    source: str  # "--flag", "$VAR", a config file's path, or "default"


def read_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}", "fix the line named above") from None
    values = {}
    for key, value in data.items():
        if key not in KEYS:
            raise InputError(f"{path}: unknown key {key!r}", f"use one of: {', '.join(KEYS)}")
        if not isinstance(value, str):
            raise InputError(f"{path}: {key} must be a string", f'write {key} = "..."')
        values[key] = _relative_to(path.parent, value) if KEYS[key][1] else value
    return values


def _relative_to(folder: Path, value: str) -> str:
    if "://" in value or value.startswith("git@") or Path(value).expanduser().is_absolute():
        return value
    return str((folder / value).resolve())


def resolve(flags: dict[str, str | None], manifest: Path | None) -> dict[str, Setting]:
    """Every key's value and where it came from: flag > env > project > user > default."""
    files = []
    if manifest is not None:
        files.append(paths.project_config(manifest))
    files.append(paths.user_config())
    read = [(f, read_file(f)) for f in files]
    result = {}
    for key, (var, _is_path) in KEYS.items():
        if flags.get(key):
            result[key] = Setting(key, flags[key], f"--{key}")
        elif var and os.environ.get(var):
            result[key] = Setting(key, os.environ[var], f"${var}")
        else:
            found = next(((f, v[key]) for f, v in read if key in v), None)
            result[key] = Setting(key, found[1], str(found[0])) if found else Setting(key, None, "default")
    return result


def apply(args: object, manifest: Path) -> None:
    """Fill the command's flags (those it has) from the environment and the config files."""
    attrs = {key: key.replace("-", "_") for key in KEYS if hasattr(args, key.replace("-", "_"))}
    settings = resolve({key: getattr(args, attr) for key, attr in attrs.items()}, manifest)
    for key, attr in attrs.items():
        setattr(args, attr, settings[key].value)
