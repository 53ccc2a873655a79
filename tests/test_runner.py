"""The one runner: logs, timeouts, typed errors, and a heartbeat on long commands."""

from __future__ import annotations

import pytest

from sd_env import runner as runner_module
from sd_env.errors import CommandError
from sd_env.runner import Runner


def test_failure_carries_exit_code_and_output_tail(tmp_path):
    run = Runner(log_path=tmp_path / "run.log")
    with pytest.raises(CommandError) as info:
        run.run(["sh", "-c", "echo first; echo last >&2; exit 3"], hint="try again")
    assert info.value.returncode == 3 and "last" in info.value.message and info.value.hint == "try again"
    log = (tmp_path / "run.log").read_text()
    assert "$ sh -c" in log and "first" in log and "# exit 3" in log


def test_timeout_kills_and_says_so():
    with pytest.raises(CommandError) as info:
        Runner().run(["sleep", "30"], timeout=0.5)
    assert info.value.returncode is None and "timed out" in info.value.message


def test_missing_command_is_exit_127():
    with pytest.raises(CommandError) as info:
        Runner().run(["sd-env-no-such-command"])
    assert info.value.returncode == 127


def test_long_labelled_command_shows_it_is_alive(monkeypatch, capsys):
    monkeypatch.setattr(runner_module, "HEARTBEAT", 0.2)
    done = Runner().run(["sleep", "0.7"], label="uv: installing 87 locked packages")
    assert done.returncode == 0
    err = capsys.readouterr().err  # not a terminal here: plain lines instead of a spinner
    assert "uv: installing 87 locked packages: still running" in err


def test_unlabelled_command_stays_quiet(monkeypatch, capsys):
    monkeypatch.setattr(runner_module, "HEARTBEAT", 0.2)
    Runner().run(["sleep", "0.5"])
    assert capsys.readouterr().err == ""
