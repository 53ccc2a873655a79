"""Step results, their reduction to an exit code, and how they are shown."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"
REPORT_VERSION = 1
_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIPPED: "dim"}


@dataclass(frozen=True)
class Result:
    component: str
    step: str
    status: str
    detail: str
    seconds: float = 0.0


def exit_code(results: Iterable[Result]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def console(stderr: bool = False) -> Console:
    # rich honours NO_COLOR and only animates on a terminal.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def progress(line: str) -> None:
    """A terse step line on stderr (`* cloning accelerate v0.16.0`)."""
    console(stderr=True).print(f"* {line}", markup=False)


_busy = threading.Lock()  # held while something animates: nested activities stay quiet


@contextmanager
def activity(label: str | None, every: float) -> Iterator[None]:
    """Show that a long step is alive: a spinner with the elapsed time on a terminal, else a
    line on stderr after each `every` seconds of it. Quiet without a label or inside another."""
    if not label or not _busy.acquire(blocking=False):
        yield
        return
    try:
        err = console(stderr=True)
        if err.is_terminal:
            with err.status(_Elapsed(label)):
                yield
            return
        done = threading.Event()
        started = time.monotonic()

        def beat() -> None:
            while not done.wait(every):
                sys.stderr.write(f"  ... {label}: still running ({time.monotonic() - started:.0f} s)\n")
                sys.stderr.flush()

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
    finally:
        _busy.release()


class _Elapsed:
    """A label with the seconds since it appeared, recomputed on each refresh."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()

    def __rich__(self) -> Text:
        return Text(f"{self.label} ({time.monotonic() - self.started:.0f} s)")


def table(title: str, results: list[Result]) -> None:
    t = Table(title=title, title_justify="left")
    for col in ("component", "step", "status", "detail", "s"):
        t.add_column(col, justify="right" if col == "s" else "left")
    for r in results:
        t.add_row(r.component, r.step, f"[{_STYLE[r.status]}]{r.status}[/]", r.detail,
                  f"{r.seconds:.1f}")
    console().print(t)


def dump_json(command: str, results: list[Result], extra: dict[str, Any] | None = None) -> None:
    doc = {"version": REPORT_VERSION, "command": command, "exit_code": exit_code(results),
           "results": [asdict(r) for r in results], **(extra or {})}
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
