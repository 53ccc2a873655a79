"""The one renderer: data is never markup, and nothing is cut when stdout is not a terminal."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from sd_env import report
from sd_env.report import Result

HOSTILE = ["torch[cpu]", "/home/u/[proj]/src", "a [/tags] value", "[bold]not bold[/bold]"]


@pytest.fixture
def terminal(monkeypatch):
    """A console that believes it is a 100-column terminal."""
    monkeypatch.setattr(report, "console", lambda stderr=False: Console(
        force_terminal=True, width=100, no_color=True, highlight=False, soft_wrap=True, stderr=stderr))


def test_table_cells_print_literally_on_a_terminal(terminal, capsys):
    report.results_table("sd-env install (x -> /p/[env])", [Result(v, "step", "ok", v) for v in HOSTILE])
    out = capsys.readouterr().out
    assert "/p/[env]" in out and "┃" in out  # a real table
    for value in HOSTILE:
        assert value in out


def test_live_table_on_a_terminal_shows_rows_literally(terminal, capsys):
    with report.LiveTable("verify", ("check", "status", "detail", "s"), every=5) as live:
        for value in HOSTILE:
            live.start(value)
            live.add([value, "fail", value, "0.0"])
    out = capsys.readouterr().out
    for value in HOSTILE:
        assert value in out


def test_off_a_terminal_rows_are_plain_lines_never_cut(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    long = "/very/long/path/" + "x" * 150 + "/torch_tpu-2.1.0.post1-cp39-cp39-linux_x86_64.whl"
    report.results_table("title", [Result("torch_tpu", "wheel", "warn", f"no wheel at {long}"), *[
        Result(v, "s", "ok", v) for v in HOSTILE]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["title", "component | step | status | detail | s"]
    assert lines[2] == f"torch_tpu | wheel | warn | no wheel at {long} | 0.0"
    assert [line.split(" | ")[0] for line in lines[3:]] == HOSTILE


def test_json_document_has_error_and_hint(capsys):
    from sd_env.errors import InputError

    report.dump_json("lock", 2, {"log": None}, error=InputError("no [lock] table", "add one"))
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == 2 and doc["error"] == "no [lock] table" and doc["hint"] == "add one"
