"""Where sd-env keeps things: one home folder, laid out here and only here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "SD_ENV_HOME"


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def src(self) -> Path:
        return self.home / "src"

    @property
    def state(self) -> Path:
        return self.home / "state.json"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def work(self) -> Path:
        """Scratch space for downloads and half-built checkouts; emptied after each step."""
        return self.home / "tmp"

    def checkout(self, name: str) -> Path:
        return self.src / name


def default_home(manifest: Path) -> Path:
    """$SD_ENV_HOME, else `.sd-env` in the project that holds the manifest.

    The project is the folder above `manifests/` (this repository for the
    default manifest), else the manifest's own folder.
    """
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser().resolve()
    return project_of(manifest) / ".sd-env"


def project_of(manifest: Path) -> Path:
    folder = manifest.resolve().parent
    return folder.parent if folder.name == "manifests" else folder


USER_CONFIG = Path("sd-env") / "config.toml"
PROJECT_CONFIG = "sd-env.toml"


def user_config() -> Path:
    """$XDG_CONFIG_HOME/sd-env/config.toml, else ~/.config/sd-env/config.toml."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / USER_CONFIG


def project_config(manifest: Path) -> Path:
    """sd-env.toml in the project that holds the manifest (beside manifests/), as for default_home."""
    return project_of(manifest) / PROJECT_CONFIG
