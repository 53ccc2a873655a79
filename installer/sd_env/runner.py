"""The one place where sd-env runs commands (git, pip, uv, the target Python).

Every call is written to the run's log file with its output, gets a timeout,
and raises CommandError with the exit code and the output tail on failure.
The list of calls is kept so tests can prove what a run did not do.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sd_env.errors import CommandError

DEFAULT_TIMEOUT = 30 * 60


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
    ) -> Completed:
        args = [os.fspath(a) for a in argv]
        self.calls.append(args)
        full_env = dict(os.environ)
        full_env.update(env or {})
        started = time.monotonic()
        try:
            proc = subprocess.run(
                args,
                cwd=cwd,
                env=full_env,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=None if input_text is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            out = _text(exc.stdout) + _text(exc.stderr)
            self._log(args, cwd, None, out, time.monotonic() - started)
            raise CommandError(args, None, out + f"\n(timeout after {timeout:.0f} s)", hint) from None
        except FileNotFoundError:
            raise CommandError(args, 127, f"{args[0]}: command not found", hint) from None
        seconds = time.monotonic() - started
        self._log(args, cwd, proc.returncode, proc.stdout + proc.stderr, seconds)
        if check and proc.returncode != 0:
            raise CommandError(args, proc.returncode, proc.stdout + proc.stderr, hint)
        return Completed(args, proc.returncode, proc.stdout, proc.stderr, seconds)

    def _log(self, args: list[str], cwd: Path | None, code: int | None, output: str, seconds: float) -> None:
        if self.echo and output:
            import sys

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


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")
