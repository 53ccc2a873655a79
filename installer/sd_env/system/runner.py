"""The one place where sd-env runs commands (git, pip, uv, the target Python).

Every call is written to the run's log file with its output, gets a timeout,
and raises CommandError with the exit code and the output tail on failure.
The list of calls is kept so tests can prove what a run did not do.

A timeout is a limit: each command runs in its own process group, and on
timeout (or Ctrl-C) the whole group is terminated, then killed, and sd-env
never waits without a limit on pipes a grandchild may still hold. Output is
read as bytes and decoded without ever raising (a driver message in GBK is
shown with replacement characters, not a crash).
"""

from __future__ import annotations

import contextlib
import locale
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_env.errors import CommandError, StepError
from sd_env.report import activity
from sd_env.system import fsutil

DEFAULT_TIMEOUT = 30 * 60
HEARTBEAT = 5.0  # seconds of silence before a labelled command says it is still running
GRACE = 2.0  # seconds between terminating a timed-out process group and killing it


@dataclass
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def decode(data: bytes | None) -> str:
    """Text from a command's output, whatever its encoding: UTF-8, else the locale's, else
    UTF-8 with replacement characters. Never raises."""
    if not data:
        return ""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    preferred = locale.getpreferredencoding(False)
    if preferred.lower().replace("-", "") not in ("utf8", "ascii", "ansix3.41968"):
        try:
            return data.decode(preferred)
        except (UnicodeDecodeError, LookupError):
            pass
    return data.decode("utf-8", errors="replace")


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
                args, cwd=cwd, env=full_env, start_new_session=True,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise CommandError(args, 127, f"{args[0]}: command not found", hint) from None
        data = input_text.encode("utf-8") if input_text is not None else None
        with activity(label, every=HEARTBEAT):
            try:
                out_b, err_b = proc.communicate(data, timeout=timeout)
            except subprocess.TimeoutExpired:
                out_b, err_b = _stop(proc)
                out, err = decode(out_b), decode(err_b)
                self._log(args, cwd, None, out + err, time.monotonic() - started)
                raise CommandError(args, None, out + err + f"\n(timeout after {timeout:.0f} s)", hint) from None
            except BaseException:  # Ctrl-C: the group is in its own session, so it did not see it
                _stop(proc)
                raise
        out, err = decode(out_b), decode(err_b)
        seconds = time.monotonic() - started
        self._log(args, cwd, proc.returncode, out + err, seconds)
        if check and proc.returncode != 0:
            raise CommandError(args, proc.returncode, out + err, hint)
        return Completed(args, proc.returncode, out, err, seconds)

    def download(self, url: str, dest: Path, *, timeout: float = 60, hint: str = "") -> Path:
        """Fetch `url` to `dest` (written atomically, so a cut download leaves nothing), logged."""
        import urllib.request  # here, not at the top: 40 ms of start-up that only downloads need

        started = time.monotonic()
        self.calls.append(["download", url])
        try:
            with activity(f"downloading {url}", every=HEARTBEAT), fsutil.replacing(dest) as partial, \
                    urllib.request.urlopen(url, timeout=timeout) as resp, partial.open("wb") as out:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    if time.monotonic() - started > DEFAULT_TIMEOUT:
                        raise TimeoutError(f"not finished after {DEFAULT_TIMEOUT} s")
        except OSError as exc:
            self._log(["download", url], None, 1, str(exc), time.monotonic() - started)
            raise StepError(f"cannot download {url}: {exc}", hint) from None
        self._log(["download", url], None, 0, f"-> {dest} ({dest.stat().st_size} bytes)",
                  time.monotonic() - started)
        return dest

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
        with self.log_path.open("a", encoding="utf-8", errors="replace") as log:
            log.write(f"$ {' '.join(args)}" + (f"  (in {cwd})" if cwd else "") + "\n")
            if output:
                log.write(output if output.endswith("\n") else output + "\n")
            log.write(f"# exit {code} in {seconds:.2f} s\n\n")

    def count(self, *words: str) -> int:
        """How many calls contained all of `words` (tests use it to prove no fetch/pip ran)."""
        return sum(all(w in call for w in words) for call in self.calls)


def _stop(proc: subprocess.Popen) -> tuple[bytes, bytes]:
    """Terminate the process group, then kill it; whatever output could still be read, in bounded time."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            return proc.communicate(timeout=GRACE)
        except subprocess.TimeoutExpired:
            continue
    # A grandchild that left the group still holds the pipes: stop reading them.
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GRACE)
    return b"", b""
