"""`sd-env fleet-report` over real `verify --json` reports of a tiny project.

The reports come from real verify runs (a tiny upstream with a patch, installed in a real
venv without torch, so the Linear smoke test fails there: such a host is "not ready").
The playbook's end-to-end run over network-namespace hosts is tests/fleet/test_fleet.py.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core import state
from sd_env.errors import InputError
from sd_env.fleet import inventory as ansible_inventory
from sd_env.fleet.reports import parse_age
from tests.conftest import git, tiny_component
from tests.workflows.test_install import setup_tiny


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
    # when and from what: a finish time in UTC, an id of this run, the bundle (none: installed from git)
    finished = datetime.fromisoformat(doc["finished"])
    assert finished.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - finished) < timedelta(minutes=10)
    assert uuid.UUID(doc["run_id"]).version == 4 and doc["bundle"] is None


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


def write_doc(folder: Path, name: str, doc: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(doc))


def ready_doc(reports: Path, finished: datetime | None) -> dict:
    """host-a's real report as a ready host's (this target has no torch, so its Linear row failed),
    finished at `finished` (None: no finish time, as an older sd-env wrote)."""
    doc = json.loads((reports / "host-a.json").read_text())
    doc["exit_code"] = 0
    for check in doc["checks"]:
        check["status"] = "ok" if check["status"] == "fail" else check["status"]
    doc.pop("finished")
    if finished is not None:
        doc["finished"] = finished.isoformat(timespec="seconds")
    return doc


def test_an_old_report_or_one_without_a_finish_time_is_stale_and_not_ready(reports, capsys):
    now = datetime.now(timezone.utc)
    write_doc(reports, "host-a", ready_doc(reports, now - timedelta(minutes=5)))
    write_doc(reports, "host-b", ready_doc(reports, now - timedelta(days=2, hours=3)))
    write_doc(reports, "host-c", ready_doc(reports, None))
    write_doc(reports, "host-d", ready_doc(reports, now + timedelta(hours=3, minutes=30)))
    code, out = fleet(reports, capsys, "--json")
    doc = json.loads(out)
    hosts = {h["name"]: h for h in doc["hosts"]}
    assert code == 1 and (doc["ready"], doc["stale"], doc["missing"], doc["max_age_seconds"]) == (1, 3, 0, 86400)
    assert (hosts["host-a"]["ready"], hosts["host-a"]["stale"], hosts["host-a"]["report"]) == (True, False, "5 m ago")
    assert (hosts["host-b"]["ready"], hosts["host-b"]["stale"]) == (False, True)
    assert hosts["host-b"]["failed"] == ["stale report: it finished 2 d 3 h ago, more than --max-age 24 h; verify "
                                         "the host again"]
    assert hosts["host-c"]["failed"] == ["stale report: it has no finish time (a report from an older sd-env); "
                                         "verify the host again"]
    assert "the host's clock is off" in hosts["host-d"]["failed"][0]
    assert hosts["host-d"]["report"] == "3 h ahead (stale)"
    # a longer --max-age keeps the two-day-old one; 4 minutes not even the 5-minute-old one
    code, out = fleet(reports, capsys, "--json", "--max-age", "3d")
    assert {h["name"] for h in json.loads(out)["hosts"] if h["ready"]} == {"host-a", "host-b"}
    code, out = fleet(reports, capsys, "--json", "--max-age", "240")
    assert {h["name"] for h in json.loads(out)["hosts"] if h["ready"]} == set()
    code, out = fleet(reports, capsys)
    assert "1 of 4 hosts ready (3 stale, 0 missing" in out and "2 d 3 h ago (stale)" in out


def test_max_age_takes_minutes_hours_days_and_seconds(capsys, tmp_path):
    assert [parse_age(t) for t in ("90m", "12h", "2d", "3600", "1.5h", "30s", "1w")] == [
        5400, 43200, 172800, 3600, 5400, 30, 604800]
    for bad in ("", "abc", "0", "-5m", "3y"):
        with pytest.raises(ValueError):
            parse_age(bad)
    capsys.readouterr()
    assert main(["fleet-report", str(tmp_path), "--max-age", "soon", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["error"] == "bad command line (see stderr)"


def test_inventory_hosts_without_a_report_are_missing(reports, capsys, tmp_path):
    now = datetime.now(timezone.utc)
    write_doc(reports, "host-a", ready_doc(reports, now))
    (reports / "host-b.json").unlink()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("solo ansible_host=10.0.0.9\n[sc7]\nhost-a ansible_host=10.0.0.1\nhost-b:2222\n"
                         "sc7-[01:02]\n\n[sc7:vars]\nansible_user=root\n[all:children]\nsc7\n")
    code, out = fleet(reports, capsys, "--json", "--inventory", str(inventory))
    doc = json.loads(out)
    hosts = {h["name"]: h for h in doc["hosts"]}
    assert code == 1 and list(hosts) == ["host-a", "solo", "host-b", "sc7-01", "sc7-02"]
    assert (doc["total"], doc["ready"], doc["missing"], doc["stale"]) == (5, 1, 4, 0)
    assert hosts["host-a"]["ready"] and not hosts["host-a"]["missing"]
    for name in ("solo", "host-b", "sc7-01", "sc7-02"):
        assert (hosts[name]["ready"], hosts[name]["missing"], hosts[name]["report"]) == (False, True, "missing")
        assert hosts[name]["failed"][0].startswith("no report: the host was not reached")
    # an empty folder is a fleet of missing hosts with an inventory, an error without one
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = fleet(empty, capsys, "--json", "--inventory", str(inventory))
    assert code == 1 and json.loads(out)["missing"] == 5


def test_inventory_reading(tmp_path):
    ini = tmp_path / "hosts.ini"
    ini.write_text("# fleet\n; also a comment\n[a]\nweb[01:03].lab ansible_port=22\nnode[a:c]\n"
                   "n[0:10:5]\n[a:vars]\nnot_a_host=1\n[b:children]\na\n[b]\nweb01.lab\nfe80::1\n")
    assert ansible_inventory.hosts(ini) == ["web01.lab", "web02.lab", "web03.lab", "nodea", "nodeb", "nodec",
                                            "n0", "n5", "n10", "fe80::1"]
    yaml = tmp_path / "hosts.yml"
    yaml.write_text("all:\n  hosts:\n    a:\n")
    with pytest.raises(InputError, match="a YAML inventory"):
        ansible_inventory.hosts(yaml)
    with pytest.raises(InputError, match="cannot read it"):
        ansible_inventory.hosts(tmp_path / "absent.ini")


def test_verify_json_names_the_bundle_the_environment_came_from(project, upstream, fresh_target, capsys):
    setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    record = state.load(project.home / "state.json")
    record.bundle = state.BundleRecord("ab" * 32, "/srv/bundles/sd14", "2026-12-01T08:00:00+00:00")
    state.save(record, project.home / "state.json")
    assert state.load(project.home / "state.json").bundle == record.bundle  # read back as written
    capsys.readouterr()
    project.cli("verify", "--quick", "--json", python=fresh_target)
    doc = json.loads(capsys.readouterr().out)
    assert doc["bundle"] == {"id": "ab" * 32, "path": "/srv/bundles/sd14", "installed": "2026-12-01T08:00:00+00:00",
                             "anchored": "none"}
