"""Packages patched in place by Sophgo's own script (sentinel `<package>/sophgo.py`): status and verify
say so, instead of calling its changes unknown local edits."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sd_env.core import manifest
from sd_env.patching import inplace, status
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify.context import Check, Context
from sd_env.verify.environment import check_sources
from tests.conftest import run_in
from tests.patching.test_repatch import CORE_PY, checkout, install_tiny, status_row


@pytest.fixture
def installed(project, upstream, fresh_target):
    return install_tiny(project, upstream, fresh_target)


def sources_check(project, python: Path) -> Check:
    man = manifest.load(project.manifest)
    ctx = Context(man, Paths(project.home), Runner(), python, quick=True)
    return check_sources(ctx, status.collect(man, Paths(project.home), Runner(), python))


def test_sentinel_in_the_checkout_names_the_script_not_local_edits(installed, fresh_target, capsys):
    co = checkout(installed)
    (co / "src" / "tinypkg" / "sophgo.py").write_text("# applied by Sophgo's patch script\n")
    core = co / CORE_PY
    core.write_text(core.read_text() + "\n# Sophgo's in-place change\n")
    (co / "NOTES.txt").write_text("mine\n")  # an edit of the user's own, outside the package
    row = status_row(installed, fresh_target, capsys)
    assert row["inplace"].startswith("patched in place by Sophgo's in-place patch script (sentinel ")
    assert row["inplace"].endswith(f"; changed: {CORE_PY}, src/tinypkg/sophgo.py")
    assert row["edited"] == ["NOTES.txt"], "only the edit outside the patched package stays a local edit"
    check = sources_check(installed, fresh_target)
    assert check.status == "fail"
    assert "tinypkg: patched in place by Sophgo's in-place patch script" in check.detail
    assert "local edits in NOTES.txt" in check.detail and f"local edits in {CORE_PY}" not in check.detail


def test_without_the_sentinel_the_same_change_is_a_local_edit(installed, fresh_target, capsys):
    core = checkout(installed) / CORE_PY
    core.write_text(core.read_text() + "\n# someone's change\n")
    row = status_row(installed, fresh_target, capsys)
    assert row["inplace"] == "" and row["edited"] == [CORE_PY]


def test_sentinel_next_to_an_installed_copy(installed, upstream, fresh_target, capsys):
    # What Sophgo's script patches: a normal (not editable) install in site-packages.
    subprocess.run([str(fresh_target), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--force-reinstall", str(upstream.repo)], check=True)
    site = Path(run_in(fresh_target, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    assert status_row(installed, fresh_target, capsys)["inplace"] == ""
    (site / "tinypkg" / "sophgo.py").write_text("")
    row = status_row(installed, fresh_target, capsys)
    assert row["inplace"] == f"patched in place by Sophgo's in-place patch script (sentinel {site}/tinypkg/sophgo.py)"
    assert "installed normally (not the managed checkout)" in row["install"]


def test_in_site_skips_editable_entries_and_other_packages(tmp_path):
    (tmp_path / "accelerate").mkdir()
    (tmp_path / "accelerate" / "sophgo.py").write_text("")
    info = str(tmp_path / "accelerate-0.30.1.dist-info")
    assert inplace.in_site([{"path": info}], "accelerate") is not None
    assert inplace.in_site([{"path": info, "editable": True}], "accelerate") is None
    assert inplace.in_site([{"path": str(tmp_path / "transformers-4.41.2.dist-info")}], "transformers") is None
