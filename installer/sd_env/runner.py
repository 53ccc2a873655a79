"""The one place where sd-env runs commands (git, pip, uv, the target Python).

Every call is written to the run's log file with its output, gets a timeout,
and raises CommandError with the exit code and the output tail on failure.
The list of calls is kept so tests can prove what a run did not do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_env.errors import CommandError

DEFAULT_TIMEOUT = 30 * 60
HEARTBEAT = 30.0  # seconds between "still running" lines off a terminal


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@dataclass
class Runner:
    log_path: Path | None = None
    echo: bool = False  # -v: copy subprocess output to stderr as well
    calls: list[list[str]] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        check: bool = True,
        hint: str = "",
        input_text: str | None = None,
        label: str | None = None,
    ) -> Completed:
        """Run and wait. With `label`, a long command shows it is alive: a spinner with
        the elapsed time on a terminal, else a line every HEARTBEAT seconds."""
        args = [os.fspath(a) for a in argv]
        self.calls.append(args)
        full_env = dict(os.environ)
        full_env.update(env or {})
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                args, cwd=cwd, env=full_env, text=True,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise CommandError(args, 127, f"{args[0]}: command not found", hint) from None
        with _Heartbeat(label) as beat:
            pending = input_text
            while True:
                left = timeout - (time.monotonic() - started)
                try:
                    out, err = proc.communicate(pending, timeout=max(0.1, min(left, HEARTBEAT if label else left)))
                    break
                except subprocess.TimeoutExpired:
                    pending = None
                    if time.monotonic() - started >= timeout:
                        proc.kill()
                        out, err = proc.communicate()
                        self._log(args, cwd, None, out + err, time.monotonic() - started)
                        raise CommandError(args, None, out + err + f"\n(timeout after {timeout:.0f} s)",
                                           hint) from None
                    beat.tick(time.monotonic() - started)
        seconds = time.monotonic() - started
        self._log(args, cwd, proc.returncode, out + err, seconds)
        if check and proc.returncode != 0:
            raise CommandError(args, proc.returncode, out + err, hint)
        return Completed(args, proc.returncode, out, err, seconds)

    def attached(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str],
                 cwd: Path | None = None, preexec: Any = None) -> int:
        """Run with the terminal attached and `env` as the whole environment: for a training run,
        whose own progress bar is the output. Logs the command and exit code; returns the code."""
        args = [os.fspath(a) for a in argv]
        self.calls.append(args)
        started = time.monotonic()
        try:
            code = subprocess.run(args, cwd=cwd, env=dict(env), preexec_fn=preexec).returncode
        except FileNotFoundError:
            raise CommandError(args, 127, f"{args[0]}: command not found") from None
        self._log(args, cwd, code, "(output went to the terminal)", time.monotonic() - started)
        return code

    def _log(self, args: list[str], cwd: Path | None, code: int | None, output: str, seconds: float) -> None:
        if self.echo and output:
            sys.stderr.write(output if output.endswith("\n") else output + "\n")
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(args)}" + (f"  (in {cwd})" if cwd else "") + "\n")
            if output:
                log.write(output if output.endswith("\n") else output + "\n")
            log.write(f"# exit {code} in {seconds:.2f} s\n\n")

    def count(self, *words: str) -> int:
        """How many calls contained all of `words` (tests use it to prove no fetch/pip ran)."""
        return sum(all(w in call for w in words) for call in self.calls)


class _Heartbeat:
    """Shows that a labelled command is still running; silent for unlabelled ones."""

    def __init__(self, label: str | None) -> None:
        self.label = label
        self.status: Any = None  # a rich Status while animating

    def __enter__(self) -> _Heartbeat:
        if self.label and sys.stderr.isatty():
            from rich.console import Console

            self.status = Console(stderr=True).status(self.label)
            self.status.__enter__()
        return self

    def tick(self, seconds: float) -> None:
        if self.status is not None:
            self.status.update(f"{self.label} ({seconds:.0f} s)")
        elif self.label:
            sys.stderr.write(f"  ... {self.label}: still running ({seconds:.0f} s)\n")
            sys.stderr.flush()

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(None, None, None)
