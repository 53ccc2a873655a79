"""What is not ready, or was not checked, and the one command that fixes it.

Said where a user looks last: the end of `sd-env verify` and of ./bootstrap.sh
(through `sd-env train --check`). A green verify whose LoRA step ran sd-env's
own equivalent (diffusers from its sdist, no examples/) must not be followed
by a `train` that fails at once; "all checks passed" is said only when every
check ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sd_env.core import state
from sd_env.errors import InputError
from sd_env.report import FAIL, NA, SKIPPED
from sd_env.system.paths import Paths

EXAMPLE = Path("examples") / "text_to_image" / "train_text_to_image_lora.py"


class Row(Protocol):  # a verify check (verify.Check); a Protocol keeps this module below verify
    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def detail(self) -> str: ...


def training_script(paths: Paths) -> tuple[Path, InputError | None]:
    """The managed checkout's training script, and why `sd-env train` cannot run it (None: it can)."""
    script = paths.checkout("diffusers") / EXAMPLE
    if script.is_file():
        return script, None
    rec = state.load(paths.state).components.get("diffusers")
    if rec is not None and rec.source == "sdist":
        return script, InputError(
            f"no training script: diffusers in {paths.home} came from its PyPI sdist (git was unreachable), "
            f"which has no examples/ folder",
            "get the script from a git mirror of github.com/huggingface/diffusers: `sd-env install "
            f"--git-mirror PREFIX` (PREFIX/huggingface/diffusers.git with tag {rec.tag}); or pass "
            f"--script PATH to train_text_to_image_lora.py of diffusers {rec.tag} (e.g. from a bundle)")
    return script, InputError(f"no training script at {script}", "run `sd-env install` (or ./bootstrap.sh) first")


def verify_summary(checks: Sequence[Row], paths: Paths, *, quick: bool, emulated: bool) -> list[str]:
    """verify's last lines: the verdict, what was not checked and how to check it, what train lacks."""
    failed = [c.name for c in checks if c.status == FAIL]
    missed = [c for c in checks if c.status in (SKIPPED, NA)]
    if failed:
        lines = ["FAILED: " + ", ".join(failed)]
    elif missed:
        lines = ["no check failed, but not everything was checked: not checked: "
                 + ", ".join(f"{c.name} ({_why(c.detail)})" for c in missed)]
    else:
        lines = ["all checks passed"]
    if not emulated and any(c.name == "lora step" and c.status == NA for c in checks):
        lines.append("the fp16 LoRA step runs without a card on the emulated tpu: `sd-env verify --emulate`")
    if quick:
        lines.append("`sd-env verify` without --quick also runs the LoRA step and inference")
    _script, problem = training_script(paths)
    if problem is not None:
        lines.append(f"not ready for `sd-env train`: {problem.message}; fix: {problem.hint}")
    return lines


def _why(detail: str) -> str:
    """A check's reason in a few words: 'skipped: no SC7 card here (...)' -> 'no SC7 card here'."""
    text = detail.split("\n", 1)[0].removeprefix("skipped: ")
    for stop in (" (", "; "):
        text = text.split(stop, 1)[0]
    return text
