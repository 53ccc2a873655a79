"""Step results, their reduction to an exit code, and the one place that shows them.

Every command's report goes through here: a table on a terminal, plain rows
(one line each, never cut) when stdout is a pipe or a file, or one JSON
document with --json. Data is never read as rich markup: `torch[cpu]` or a
path with `[/x]` in it prints as it is.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

# rich is imported where a line or table is printed, not here: it is 40 ms of start-up that
# `sd-env run -q`, `--version` and --json runs never need.

OK, WARN, FAIL, SKIPPED, NA = "ok", "warn", "fail", "skipped", "n/a"
REPORT_VERSION = 1
_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIPPED: "dim", NA: "dim"}
RESULT_COLUMNS = ("component", "step", "status", "detail", "s")

Cell = Union[str, "Text"]  # a Text only for a highlighted part (see `marked`); data is plain str


@dataclass(frozen=True)
class Result:
    component: str
    step: str
    status: str
    detail: str
    seconds: float = 0.0


class _HasStatus(Protocol):
    @property
    def status(self) -> str: ...


def exit_code(results: Iterable[_HasStatus]) -> int:
    """1 when any step result or verify check failed, else 0."""
    return 1 if any(r.status == FAIL for r in results) else 0


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    # rich honours NO_COLOR and only animates on a terminal.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


_last_line = [time.monotonic()]  # when stderr last showed a sign of life (heartbeats count from it)


def progress(line: str) -> None:
    """A terse step line on stderr (`* cloning accelerate v0.16.0`)."""
    console(stderr=True).print(f"* {line}", markup=False)
    _last_line[0] = time.monotonic()


def say(text: str, stderr: bool = False) -> None:
    """Plain text, never cut or read as markup."""
    console(stderr=stderr).print(text, markup=False)


def marked(text: str, mark: str) -> Text:
    """`text` followed by a highlighted `mark` (` (drifted)`, `local edits:`), both literal."""
    from rich.text import Text

    return Text(text) + Text(mark, style="red")


# Tables ----------------------------------------------------------------------
def _plain(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell.plain


def plain_row(cells: Sequence[Cell]) -> str:
    """One line per row, ` | ` between cells; a cell's further lines are indented below it."""
    return " | ".join(_plain(c) for c in cells).replace("\n", "\n    ")


def _cell(column: str, value: Cell) -> Text:
    from rich.text import Text

    if not isinstance(value, str):
        return value
    return Text(value, style=_STYLE.get(value, "") if column == "status" else "")


def _grid(title: str, columns: Sequence[str], rows: Iterable[Sequence[Cell]]) -> Table:
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=Text(title), title_justify="left")
    for col in columns:
        grid.add_column(col, justify="right" if col == "s" else "left", overflow="fold")
    for row in rows:
        grid.add_row(*(_cell(col, value) for col, value in zip(columns, row)))
    return grid


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
    """A table on a terminal; off a terminal, the title, a header line and one plain line per row."""
    out = console()
    if out.is_terminal:
        out.print(_grid(title, columns, rows))
        return
    write = sys.stdout.write
    write(f"{title}\n{plain_row(columns)}\n")
    for row in rows:
        write(plain_row(row) + "\n")
    sys.stdout.flush()


def result_rows(results: Iterable[Result]) -> list[list[Cell]]:
    return [[r.component, r.step, r.status, r.detail, f"{r.seconds:.1f}"] for r in results]


def results_table(title: str, results: list[Result]) -> None:
    table(title, RESULT_COLUMNS, result_rows(results))


class LiveTable:
    """Rows shown as they finish, with the step running now named while it runs.

    On a terminal: a live table with a spinner line under it. Off a terminal:
    the title and header at once, then each row as a plain line when it is
    added, and `* name` on stderr when a step starts (with a "still running"
    line every `every` seconds). With `rows=False` (--json, whose document comes at the end)
    only the stderr part: which step runs, and that it is alive."""

    def __init__(self, title: str, columns: Sequence[str], every: float, rows: bool = True) -> None:
        self.title, self.columns, self.every, self.show_rows = title, columns, every, rows
        self.rows: list[Sequence[Cell]] = []
        self.current: _Elapsed | None = None
        self.live: Live | None = None
        self.step: Any = None  # the plain-mode heartbeat of the running step

    def __enter__(self) -> LiveTable:
        out = console()
        if not self.show_rows:
            pass
        elif out.is_terminal and _busy.acquire(blocking=False):
            from rich.live import Live

            self.live = Live(self, console=out, refresh_per_second=4, transient=False)
            self.live.__enter__()
        else:
            sys.stdout.write(f"{self.title}\n{plain_row(self.columns)}\n")
            sys.stdout.flush()
        return self

    def __rich__(self) -> Group:
        from rich.console import Group
        from rich.text import Text

        parts: list[Any] = [_grid(self.title, self.columns, self.rows)]
        if self.current is not None:
            parts.append(Text("running: ") + self.current.__rich__())
        return Group(*parts)

    def start(self, name: str) -> None:
        self._end_step()
        if self.live is not None:
            self.current = _Elapsed(name)
            return
        progress(f"running {name}")
        self.step = activity(name, self.every)
        self.step.__enter__()

    def add(self, row: Sequence[Cell]) -> None:
        self._end_step()
        self.rows.append(row)
        if self.live is None and self.show_rows:
            sys.stdout.write(plain_row(row) + "\n")
            sys.stdout.flush()

    def _end_step(self) -> None:
        self.current = None
        if self.step is not None:
            self.step.__exit__(None, None, None)
            self.step = None

    def __exit__(self, *exc: object) -> None:
        self._end_step()
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None
            _busy.release()


# Liveness ----------------------------------------------------------------------
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
            # Counted from the last line on stderr, not from this step's start: a run of
            # shorter steps is no excuse for a long silence either.
            while not done.wait(max(0.0, _last_line[0] + every - time.monotonic())):
                if time.monotonic() - _last_line[0] < every:
                    continue
                sys.stderr.write(f"  ... {label}: still running ({time.monotonic() - started:.0f} s)\n")
                sys.stderr.flush()
                _last_line[0] = time.monotonic()

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
        from rich.text import Text

        return Text(f"{self.label} ({time.monotonic() - self.started:.0f} s)")


# JSON ----------------------------------------------------------------------------
def dump_json(command: str, code: int, body: dict[str, Any], error: Any = None) -> None:
    """The one JSON document of a --json run: version, command, exit code, error and hint
    (None when there is none), then the command's own keys."""
    doc = {"version": REPORT_VERSION, "command": command, "exit_code": code,
           "error": getattr(error, "message", error), "hint": getattr(error, "hint", None) or None, **body}
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def results_json(results: list[Result]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover
