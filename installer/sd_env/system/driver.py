"""The libsophon driver as a host shows it: bm-smi, its version and the device nodes.

The tutorial's first step installs the driver (`dpkg -i sophon-*.deb`); a fleet report
shows its version per host. Only a card's host shows a real one.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sd_env.errors import CommandError
from sd_env.system.runner import Runner

# libsophon's proc interface (PCIe mode) has the version as a file; bm-smi's text mode prints it.
PROC_VERSION = Path("/proc/bmsophon/driver_version")
SMI_ARGS = ("--noloop", "--text_format")
_VERSION = re.compile(r"Driver\s+Version\s*:\s*([^\s|]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Driver:
    bm_smi: str | None  # where bm-smi is, if on PATH
    version: str | None  # the driver version it (or /proc) gives
    nodes: tuple[str, ...]  # /dev/bm-sophon*, /dev/bmdev-ctl

    @property
    def present(self) -> bool:
        return bool(self.bm_smi or self.nodes)

    @property
    def text(self) -> str:
        smi = f"bm-smi at {self.bm_smi}" if self.bm_smi else "bm-smi not on PATH"
        version = f", driver {self.version}" if self.version else ""
        return f"{smi}{version}; device nodes: {', '.join(self.nodes) or 'none'}"

    def as_dict(self) -> dict[str, object]:
        return {"bm_smi": self.bm_smi, "version": self.version, "nodes": list(self.nodes), "text": self.text}


def read(runner: Runner) -> Driver:
    smi = shutil.which("bm-smi")
    nodes = sorted(glob.glob("/dev/bm-sophon*")) + (["/dev/bmdev-ctl"] if os.path.exists("/dev/bmdev-ctl") else [])
    return Driver(smi, _version(runner, smi), tuple(nodes))


def _version(runner: Runner, smi: str | None) -> str | None:
    try:
        if PROC_VERSION.is_file():
            return PROC_VERSION.read_text(errors="replace").strip() or None
    except OSError:
        pass
    if smi is None:
        return None
    try:
        got = runner.run([smi, *SMI_ARGS], check=False, timeout=15)
    except (CommandError, OSError):  # a bm-smi that hangs or cannot start gives no version
        return None
    found = _VERSION.search(got.stdout + got.stderr)
    return found.group(1) if found else None
