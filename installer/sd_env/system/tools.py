"""sd-env's own helper tools, found one way for every command."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def find_uv() -> str | None:
    """uv beside the running interpreter first (sd-env's tool venv, activated or not), then on PATH."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")
