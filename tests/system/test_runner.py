"""The one runner: logs, timeouts, typed errors, and a heartbeat on long commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sd_env.core import lockfile
from sd_env.errors import CommandError, StepError
from sd_env.system import fsutil
from sd_env.system import runner as runner_module
from sd_env.system.runner import Runner
from sd_env.target import closure
from tests.conftest import ROOT


def test_failure_carries_exit_code_and_output_tail(tmp_path):
    run = Runner(log_path=tmp_path / "run.log")
    with pytest.raises(CommandError) as info:
        run.run(["sh", "-c", "echo first; echo last >&2; exit 3"], hint="try again")
    assert info.value.returncode == 3 and "last" in info.value.message and info.value.hint == "try again"
    assert not info.value.disk_full
    log = (tmp_path / "run.log").read_text()
    assert "$ sh -c" in log and "first" in log and "# exit 3" in log


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KB tmpfs: whatever writes more gets ENOSPC, as on a full disk."""
    if os.geteuid() != 0:
        pytest.skip("skipped: mounting a small tmpfs needs root")
    where = tmp_path / "full"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True, timeout=30)
    yield where
    subprocess.run(["umount", str(where)], check=True, timeout=30)


@pytest.mark.parametrize("writer", [
    ["dd", "if=/dev/zero", "of={where}/blob", "bs=16k", "count=8"],  # a C tool: "No space left on device"
    [sys.executable, "-c", "open('{where}/blob', 'wb').write(bytes(1 << 20))"],  # Python: "[Errno 28]"
])
def test_a_full_disk_is_said_instead_of_the_commands_hint(full_disk, writer):
    argv = [a.format(where=full_disk) for a in writer]
    with pytest.raises(CommandError) as info:
        Runner().run(argv, hint="check the package index")
    assert info.value.message.startswith(f"`{argv[0]}") and ": the disk is full\n" in info.value.message
    assert "No space left on device" in info.value.message
    assert info.value.hint.startswith("free space on the disk it writes to") and info.value.disk_full
    # The lock installer's reading of a failed install keeps it as it is.
    lock = lockfile.read(ROOT / "manifests" / "sc7-sd14-lora.pypi.lock.txt")
    assert closure.explain_hash_mismatch(info.value, lock) is info.value


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


def test_timeout_kills_the_whole_group_and_does_not_wait_for_grandchildren():
    # The grandchild `sleep 30` keeps the pipes open: killing only `sh` would wait 30 s.
    started = time.monotonic()
    with pytest.raises(CommandError) as info:
        Runner().run(["sh", "-c", "sleep 6 & sleep 30"], timeout=1)
    assert info.value.returncode is None
    assert time.monotonic() - started < 4


def test_a_group_that_ignores_sigterm_is_killed():
    started = time.monotonic()
    with pytest.raises(CommandError):
        Runner().run(["sh", "-c", "trap '' TERM; sleep 30 & sleep 30"], timeout=1)
    assert time.monotonic() - started < 1 + 2 * runner_module.GRACE + 1


def test_output_that_is_not_utf8_never_raises(tmp_path):
    script = "import sys; sys.stderr.buffer.write('驱动错误 [/x]'.encode('gbk')); sys.stdout.buffer.write(b'ok\\xff')"
    done = Runner(log_path=tmp_path / "run.log").run([sys.executable, "-c", script])
    assert done.stdout.startswith("ok") and "[/x]" in done.stderr
    assert "# exit 0" in (tmp_path / "run.log").read_text(encoding="utf-8")


def test_download_goes_through_the_runner_and_logs(tmp_path):
    source = tmp_path / "w.whl"
    source.write_bytes(b"wheel")
    run = Runner(log_path=tmp_path / "run.log")
    dest = run.download(source.as_uri(), tmp_path / "cache" / "w.whl")
    assert dest.read_bytes() == b"wheel" and run.count("download")
    assert "download" in (tmp_path / "run.log").read_text()
    with pytest.raises(StepError) as info:
        run.download((tmp_path / "nope.whl").as_uri(), tmp_path / "cache" / "nope.whl", hint="by hand")
    assert "cannot download" in info.value.message and info.value.hint == "by hand"
    assert not list((tmp_path / "cache").glob("*" + fsutil.SUFFIX))  # the failed download left no temporary file


def test_ctrl_c_stops_the_whole_group(tmp_path):
    """The children run in their own session (so a terminal's Ctrl-C reaches only sd-env): sd-env
    must stop them itself, grandchildren included."""
    pids = tmp_path / "pids"

    def interrupt(*_args):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            Runner().run(["sh", "-c", f"echo $$ > {pids}; sleep 30 & echo $! >> {pids}; wait"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 1 + 2 * runner_module.GRACE + 1
    time.sleep(0.2)
    for pid in map(int, pids.read_text().split()):
        assert not alive(pid), pid


def alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may be slow to reap an orphan)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
