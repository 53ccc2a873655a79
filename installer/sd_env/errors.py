"""The exceptions sd-env raises; the CLI turns them into `error: ...` and an exit code."""

from __future__ import annotations

import re


class SdEnvError(Exception):
    """Root of every error sd-env reports to the user.

    `hint` is one line telling the user what to do next.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(SdEnvError):
    """Bad input: a malformed manifest, a bad flag, a missing interpreter (exit 2)."""

    exit_code = 2


class ManifestError(InputError):
    """A manifest that cannot be used; the message names the file and the key."""

    def __init__(self, path: object, key: str, problem: str, fix: str) -> None:
        where = f"{path}: {key}" if key else f"{path}"
        super().__init__(f"{where}: {problem}", fix)
        self.key = key


class StepError(SdEnvError):
    """A step (clone, patch, build, probe) failed (exit 1)."""


# What a child process prints when a write failed for lack of space (C, Python, Rust and git).
DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|\[Errno 28\]|os error 28")


class CommandError(StepError):
    """A subprocess failed or timed out; carries its exit code and output tail."""

    def __init__(self, argv: list[str], returncode: int | None, output: str, hint: str = "") -> None:
        shown = " ".join(argv)
        how = "timed out" if returncode is None else f"exited with {returncode}"
        tail = "\n".join(output.strip().splitlines()[-15:])
        # Callers that re-word a failure (a missing tag, a hash mismatch) leave this one as it is.
        self.disk_full = returncode is not None and DISK_FULL.search(output) is not None
        if self.disk_full:
            # The command's own hint would send the user after the wrong thing (the index, the bundle).
            how += ": the disk is full"
            hint = "free space on the disk it writes to (the target environment, the home, or $TMPDIR) and run again"
        super().__init__(f"`{shown}` {how}" + (f"\n{tail}" if tail else ""), hint)
        self.argv = argv
        self.returncode = returncode
        self.output = output


class PatchConflict(StepError):
    """A patch series does not apply; the checkout was left as it was."""


class EmulatorUnavailable(SdEnvError):
    """The tpu emulator cannot be built here: no compiler, no Python headers, or an unsupported torch."""
