"""Run a probe script with the target interpreter and read its JSON result.

A probe is a subprocess so that a crash or hang in torch or torch_tpu is a
failed check with the stderr tail, never a crash of sd-env.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sd_env.errors import CommandError
from sd_env.system.runner import Runner


@dataclass(frozen=True)
class ProbeResult:
    data: dict[str, Any] | None  # the probe's JSON (its last stdout line), None if it gave none
    problem: str | None  # why there is no usable result: crash, timeout, no JSON
    seconds: float
    stderr_tail: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None and self.data is not None and bool(self.data.get("ok", True))


def script(name: str) -> Path:
    """A probe shipped with sd-env (installer/sd_env/probes/NAME)."""
    return Path(str(resources.files("sd_env") / "probes" / name))


def run(runner: Runner, python: Path, path: Path, args: list[str], *, timeout: float,
        env: Mapping[str, str] | None = None, cwd: Path | None = None, label: str | None = None,
        launcher: list[str] | None = None) -> ProbeResult:
    """`label`: a long probe shows it is alive (Runner.run's heartbeat with the elapsed time); `launcher`:
    the argv that runs the script instead of `python` (accelerate's, one process per device)."""
    try:
        done = runner.run([*(launcher or [str(python)]), str(path), *args], timeout=timeout, check=False, env=env,
                          cwd=cwd, label=label)
    except CommandError as exc:  # only a timeout gets here (check=False)
        output = "\n".join(line for line in exc.output.splitlines() if not line.startswith("(timeout after"))
        return ProbeResult(None, f"timed out after {timeout:.0f} s (killed)", timeout, _tail(output), output)
    tail = _tail(done.stderr)
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return ProbeResult(None, f"crashed with {name}", done.seconds, tail, done.stderr)
    data = _last_json(done.stdout)
    if data is None:
        how = f"exited with {done.returncode}" if done.returncode else "printed no result"
        return ProbeResult(None, f"{how}{': ' + tail.splitlines()[-1] if tail else ''}", done.seconds, tail,
                           done.stderr)
    if done.returncode != 0 and data.get("ok", False):
        return ProbeResult(data, f"exited with {done.returncode}", done.seconds, tail, done.stderr)
    return ProbeResult(data, None, done.seconds, tail, done.stderr)


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
