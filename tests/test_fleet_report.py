"""`sd-env fleet-report` over real `verify --json` reports of a tiny project.

The reports come from real verify runs (a tiny upstream with a patch, installed in a real
venv without torch, so the Linear smoke test fails there: such a host is "not ready").
The playbook's end-to-end run over network-namespace hosts is tests/test_fleet.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sd_env.cli import main
from tests.conftest import git, tiny_component
from tests.test_install import setup_tiny


@pytest.fixture
def reports(project, upstream, fresh_target, tmp_path, capsys) -> Path:
    """Two real verify reports of the same install, as host-a.json and host-b.json."""
    setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    folder = tmp_path / "reports"
    folder.mkdir()
    capsys.readouterr()
    project.cli("verify", "--quick", "--json", python=fresh_target)
    text = capsys.readouterr().out
    for name in ("host-a", "host-b"):
        (folder / f"{name}.json").write_text(text)
    return folder


def fleet(folder: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["fleet-report", str(folder), *extra])
    return code, capsys.readouterr().out


def test_verify_json_carries_the_host_and_what_it_runs(reports):
    doc = json.loads((reports / "host-a.json").read_text())
    facts = doc["facts"]
    assert doc["host"] and facts["manifest"]["name"] == "test" and len(facts["manifest"]["sha256"]) == 64
    (comp,) = facts["components"]
    assert comp["name"] == "tinypkg" and comp["source"] == "git" and len(comp["head"]) == 40
    assert comp["patches"]["tiny-tpu.diff"]["state"] == "applied"
    assert len(comp["patches"]["tiny-tpu.diff"]["sha256"]) == 64
    assert facts["driver"]["version"] is None and facts["torch_tpu"]["version"] is None


def test_hosts_alike_but_not_ready_name_the_failed_check(reports, capsys):
    code, out = fleet(reports, capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["exit_code"] == 1
    assert (doc["total"], doc["ready"], doc["alike"]) == (2, 0, True)
    for host in doc["hosts"]:
        assert not host["ready"] and "linear smoke" in host["failed"]  # no torch in this target
        assert host["patches"] == "1 applied" and host["differs"] == []
        assert host["versions"].startswith("tinypkg v1.0")
    code, out = fleet(reports, capsys)
    assert code == 1 and "0 of 2 hosts ready" in out and "NOT READY" in out


def test_a_host_from_another_lock_or_patch_is_flagged(reports, capsys):
    third = json.loads((reports / "host-a.json").read_text())
    third["facts"]["components"][0]["patches"]["tiny-tpu.diff"]["sha256"] = "f" * 64  # another patch file
    (reports / "host-c.json").write_text(json.dumps(third))
    code, out = fleet(reports, capsys, "--json")
    hosts = {h["name"]: h for h in json.loads(out)["hosts"]}
    assert code == 1
    assert hosts["host-a"]["differs"] == [] and hosts["host-b"]["differs"] == []
    (flag,) = hosts["host-c"]["differs"]
    assert flag.startswith("patch tiny-tpu.diff: ffffffffffff (others: ")


def test_a_broken_or_foreign_report_is_a_host_not_ready_not_a_crash(reports, capsys, tmp_path):
    good = (reports / "host-a.json").read_text()
    (reports / "cut.json").write_text(good[: len(good) // 2])
    (reports / "other.json").write_text(json.dumps({"version": 1, "command": "status", "exit_code": 0}))
    code, out = fleet(reports, capsys, "--json")
    hosts = {h["name"]: h for h in json.loads(out)["hosts"]}
    assert code == 1
    assert hosts["cut"]["failed"][0].startswith("unreadable report:")
    assert hosts["other"]["failed"] == ["not a `sd-env verify --json` report"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = fleet(empty, capsys, "--json")
    assert code == 2 and json.loads(out)["error"].startswith("no HOST.json reports in")


def test_a_repaired_host_reads_ready_again(project, upstream, fresh_target, tmp_path, capsys):
    """The report follows the host: a deleted patched file fails sources+patches; after the next
    install the same host's report has only the torch-less failure left."""
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.add_patch("tiny-tpu.diff", upstream.diff({"src/tinypkg/core.py": "# patched\n"}))
    project.write_manifest([tiny_component(upstream, commit, ["tiny-tpu.diff"])])
    assert project.cli("install", python=fresh_target) == 0
    folder = tmp_path / "r"
    folder.mkdir()
    (project.home / "src" / "tinypkg" / "src" / "tinypkg" / "core.py").unlink()
    capsys.readouterr()
    project.cli("verify", "--quick", "--json", python=fresh_target)
    (folder / "h.json").write_text(capsys.readouterr().out)
    _, out = fleet(folder, capsys, "--json")
    (host,) = json.loads(out)["hosts"]
    assert "sources+patches" in host["failed"] and host["patches"] == "tiny-tpu.diff: half applied"
    assert project.cli("install", python=fresh_target) == 0
    capsys.readouterr()
    project.cli("verify", "--quick", "--json", python=fresh_target)
    (folder / "h.json").write_text(capsys.readouterr().out)
    _, out = fleet(folder, capsys, "--json")
    (host,) = json.loads(out)["hosts"]
    assert "sources+patches" not in host["failed"] and host["patches"] == "1 applied"
    shutil.rmtree(folder)
