"""The suite's own config keeps only failing tests' temporary folders (the e2e home alone is 5 GB)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, remove_killed_runs

TESTS = '''
import pytest

@pytest.fixture(scope="session")
def big(tmp_path_factory):
    where = tmp_path_factory.mktemp("e2e")
    (where / "venv.bin").write_bytes(b"x" * 1000)
    return where

def test_passes(tmp_path, big):
    (tmp_path / "kept.txt").write_text("passed")

def test_fails(tmp_path, big):
    (tmp_path / "kept.txt").write_text("failed")
    assert FAIL
'''


def run_suite(folder: Path, fail: bool) -> list[str]:
    (folder / "test_sample.py").write_text(TESTS.replace("FAIL", "False" if fail else "True"))
    root = folder / "temproot"
    root.mkdir()
    env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(root)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
                    "--rootdir", str(folder), str(folder / "test_sample.py")], env=env, capture_output=True)
    return sorted(str(p.relative_to(root)).split("/", 1)[1] for p in root.glob("pytest-of-*/pytest-[0-9]*/*")
                  if not p.name.endswith("current"))


def test_only_failing_tests_folders_are_kept(tmp_path):
    (tmp_path / "a").mkdir()
    assert run_suite(tmp_path / "a", fail=True) == ["pytest-0/e2e0", "pytest-0/test_fails0"]
    (tmp_path / "b").mkdir()
    assert run_suite(tmp_path / "b", fail=False) == []  # all passed: the session folder is gone too


def test_a_killed_runs_folder_goes_a_live_or_finished_runs_stays(tmp_path):
    """pytest keeps a folder whose lock is under three days old; a run killed by a timeout leaves one
    (22.9 GB here once). Its pid is gone: removed. A running suite's, and a failed run's kept on purpose
    (no lock left), stay."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        for n, pid in ((0, dead.pid), (1, live.pid), (2, None)):
            run = tmp_path / f"pytest-{n}"
            (run / "e2e0").mkdir(parents=True)
            (run / "e2e0" / "venv.bin").write_bytes(b"x" * 1000)
            if pid is not None:
                (run / ".lock").write_text(str(pid))
        (tmp_path / "pytest-3").mkdir()
        (tmp_path / "pytest-3" / ".lock").write_text("not a pid")
        assert remove_killed_runs(tmp_path) == [tmp_path / "pytest-0"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pytest-1", "pytest-2", "pytest-3"]
    finally:
        live.kill()
        live.wait()
