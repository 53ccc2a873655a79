"""Where sd-env keeps things: one home folder, laid out here and only here."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from sd_env.system import shipped

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

    @property
    def lock(self) -> Path:
        """Held (flock) by every command that writes; names the pid and command holding it."""
        return self.home / "sd-env.lock"

    @property
    def wheels(self) -> Path:
        """Wheels downloaded from a URL (Sophgo's torch_tpu)."""
        return self.home / "wheels"

    @property
    def emulators(self) -> Path:
        """Built tpu emulators, one folder per torch/Python/source key (see emulation.py)."""
        return self.home / "emulator"

    def checkout(self, name: str) -> Path:
        return self.src / name

    def log_file(self, command: str) -> Path:
        """A new log for one run of `command`, named so runs sort by time."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return self.logs / f"{stamp}-{os.getpid()}-{command}.log"

    @property
    def venv(self) -> Path:
        """The target environment sd-env creates when none is given or active."""
        return self.home / "venv"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def inventories(self) -> Path:
        """The target inventories `run` and `shell` reuse while the target's files are unchanged."""
        return self.cache / "inventory"

    @property
    def tiny_sd(self) -> Path:
        """verify's tiny Stable Diffusion model and dataset, built once."""
        return self.cache / "tiny-sd"

    @property
    def lora_out(self) -> Path:
        """The last LoRA verify trained."""
        return self.cache / "lora-out"

    @property
    def repatch(self) -> Path:
        return self.home / "repatch"

    @property
    def session(self) -> Path:
        """The repatch in progress, if any."""
        return self.repatch / "session.json"

    def port_work(self, name: str, version: str) -> Path:
        """The work tree where `name`'s patches are ported to `version`."""
        return self.repatch / f"{name}-{version}"

    def old_checkout(self, name: str) -> Path:
        """Where a repatch parks the replaced checkout until the new one is installed."""
        return self.repatch / f"old-{name}"


def default_home(manifest: Path) -> Path:
    """$SD_ENV_HOME, else `.sd-env` in the project that holds the manifest.

    The project is the folder above `manifests/` (this repository for the
    default manifest), else the manifest's own folder; for a shipped stack
    from a wheel install of sd-env, the current folder (never the tool's own
    environment).
    """
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser().resolve()
    return project_of(manifest) / ".sd-env"


def project_of(manifest: Path) -> Path:
    if shipped.is_installed_copy(manifest):
        return Path.cwd()
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
