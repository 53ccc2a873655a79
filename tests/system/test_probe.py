"""The probe runner: a crash, a hang or a missing result is a result, never a crash of sd-env."""

from __future__ import annotations

import sys
from pathlib import Path

from sd_env.system import probe
from sd_env.system.runner import Runner

PY = Path(sys.executable)


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "p.py"
    path.write_text(body)
    return path


def test_last_json_line_is_the_result(tmp_path):
    got = probe.run(Runner(), PY, write(tmp_path, 'print("noise")\nprint(\'{"ok": true, "x": 1}\')\n'), [], timeout=30)
    assert got.ok and got.data == {"ok": True, "x": 1} and got.problem is None


def test_segfault_is_a_failed_result(tmp_path):
    got = probe.run(Runner(), PY, write(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"),
                    [], timeout=30)
    assert not got.ok and got.problem == "crashed with SIGSEGV"


def test_hang_is_killed_at_the_timeout(tmp_path):
    got = probe.run(Runner(), PY, write(tmp_path, "import time\ntime.sleep(60)\n"), [], timeout=1.5)
    assert not got.ok and got.problem == "timed out after 2 s (killed)"
    assert got.seconds < 10


def test_no_result_names_the_error(tmp_path):
    got = probe.run(Runner(), PY, write(tmp_path, "raise SystemExit('boom: no torch')\n"), [], timeout=30)
    assert not got.ok and got.problem == "exited with 1: boom: no torch"


def test_reported_failure_keeps_its_data(tmp_path):
    got = probe.run(Runner(), PY, write(tmp_path, 'import sys\nprint(\'{"ok": false, "error": "E: x"}\')\n'
                                        "sys.exit(1)\n"), [], timeout=30)
    assert not got.ok and got.problem is None and got.data["error"] == "E: x"
