"""What the workflow tests share: the current stack's target with the emulator of its era."""

from __future__ import annotations

from pathlib import Path

import pytest

from sd_env.verify import emulation


@pytest.fixture(scope="session")
def sd15_emulator(emulated) -> tuple[Path, emulation.Emulator]:
    """The SD 1.5 stack's interpreter (torch 2.8) and the emulator built for it (once per session)."""
    return emulated("2.8")
