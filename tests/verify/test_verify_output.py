"""verify's output on a small project (no torch): hostile probe output, rows as they finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_in, tiny_component

# Runs first in every process of the target: the device probe writes GBK to stderr and exits 3,
# as a vendor's driver message in a Chinese locale would.
GBK_PTH = ('import sys, os; exec("if sys.argv and sys.argv[0].endswith(\\"torch_checks.py\\"):\\n'
           '    sys.stderr.buffer.write(\\"驱动错误: 找不到设备 [/tags]\\".encode(\\"gbk\\")); sys.stderr.flush(); '
           'os._exit(3)")\n')


def add_pth(python: Path, name: str, text: str) -> None:
    site = run_in(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(site, name).write_text(text, encoding="utf-8")


@pytest.fixture
def small(project, upstream):
    project.write_manifest([tiny_component(upstream, None)])
    return project


def test_probe_writing_gbk_is_a_failed_row_not_a_crash(small, fresh_target, capsys):
    add_pth(fresh_target, "gbk.pth", GBK_PTH)
    capsys.readouterr()
    code = small.cli("verify", "--quick", "--json", python=fresh_target)
    out = capsys.readouterr()
    doc = json.loads(out.out)
    row = {c["name"]: c for c in doc["checks"]}["torch_tpu"]
    assert code == 1 and row["status"] == "fail", row
    assert "exited with 3" in row["detail"] and "[/tags]" in row["detail"]


# The torch probe (torch_tpu and Linear rows) takes 4 s: long enough to see that the rows before it
# were already printed.
SLOW_LINEAR = ('import sys, time; exec("if sys.argv and sys.argv[0].endswith(\\"torch_checks.py\\"):\\n'
               '    time.sleep(4)")\n')


def sd_env_process(project, *args: str, python: Path | None = None) -> subprocess.Popen:
    """sd-env as a user runs it, stdout a pipe at 80 columns (as under `| tee`)."""
    argv = [sys.executable, "-m", "sd_env", args[0], "-m", str(project.manifest), "--home", str(project.home),
            *args[1:]]
    if python is not None:
        argv += ["--python", str(python)]
    env = {**os.environ, "COLUMNS": "80", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_verify_prints_each_row_as_it_finishes(small, fresh_target):
    add_pth(fresh_target, "slow.pth", SLOW_LINEAR)
    seen: dict[str, float] = {}
    with sd_env_process(small, "verify", "--quick", python=fresh_target) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            seen.setdefault(line.split(" | ")[0], time.monotonic())
        proc.wait(timeout=60)
        end = time.monotonic()
        err = proc.stderr.read()
    assert {"interpreter", "ulimit -n", "linear smoke", "lora step"} <= set(seen), seen
    # The rows before the slow check were on the pipe while it still ran.
    assert end - seen["interpreter"] > 3 and seen["linear smoke"] - seen["sources+patches"] > 3, (seen, end)
    assert "* running linear smoke" in err


def test_piped_output_keeps_whole_paths_and_literal_brackets(project, upstream, fresh_target, tmp_path):
    # A long home path with brackets, as a user's folder might be named; a tag that reads like markup.
    project.write_manifest([tiny_component(upstream, None)])
    home = tmp_path / ("very-long-folder-name-" * 4) / "[proj]" / "torch[cpu]" / "x[/tags]"
    home.mkdir(parents=True)
    for command in (("install",), ("status",), ("verify", "--quick")):
        with sd_env_process(project, *command, "--home", str(home), python=fresh_target) as proc:
            out, err = proc.communicate(timeout=600)
        assert str(home) in out, (command, out, err)  # never cut at 80 columns
        assert "Traceback" not in err, err
        if command == ("install",):
            assert f"editable install of {home / 'src' / 'tinypkg'}" in out


def test_verify_json_names_the_running_check_and_shows_it_is_alive(small, fresh_target, capsys, monkeypatch):
    from sd_env.system import runner

    monkeypatch.setattr(runner, "HEARTBEAT", 0.3)
    add_pth(fresh_target, "slow.pth", SLOW_LINEAR.replace("time.sleep(4)", "time.sleep(1.5)"))
    capsys.readouterr()
    small.cli("verify", "--quick", "--json", python=fresh_target)
    out = capsys.readouterr()
    assert json.loads(out.out)["command"] == "verify"  # still exactly one document on stdout
    assert "* running linear smoke" in out.err and "linear smoke: still running" in out.err


def test_install_has_no_silent_gap_over_5_s(small, fresh_target):
    """Every step longer than a few seconds says it is alive (piped: a line every 5 s)."""
    stamps = []
    with sd_env_process(small, "install", python=fresh_target) as proc:
        started = time.monotonic()
        assert proc.stderr is not None and proc.stdout is not None
        for _line in proc.stderr:
            stamps.append(time.monotonic())
        proc.wait(timeout=600)
        stamps.append(time.monotonic())
        proc.stdout.read()
    gaps = [b - a for a, b in zip([started, *stamps], stamps)]
    assert proc.returncode == 0 and max(gaps) < 5 + 1.5, gaps
