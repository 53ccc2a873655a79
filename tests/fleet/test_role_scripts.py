"""The Ansible role's two scripts, run as the role runs them (a Python with the code on -c):
bundle-index.py checks the bundle on the control machine before any host sees it; bundle-needs.py
says what a host lacks and prunes only a folder of the role's own. No fleet needed: the fleet test
(tests/fleet/test_fleet.py) runs them through Ansible."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.kit.bundlekit import Made, copy_of, needs_ssh_keygen

FILES = ROOT / "deploy" / "ansible" / "roles" / "sd_env" / "files"


def index_check(bundle: Path, expect: str = "", signers: str = "") -> subprocess.CompletedProcess:
    code = (FILES / "bundle-index.py").read_text()
    return subprocess.run([sys.executable, "-c", code, str(bundle), expect, signers], capture_output=True, text=True,
                          timeout=120)


def needs(dest: Path, index: str, home: Path) -> subprocess.CompletedProcess:
    code = (FILES / "bundle-needs.py").read_text()
    doc = json.loads(index)
    return subprocess.run([sys.executable, "-c", code, str(dest), doc["id"], str(home), doc["signature_sha256"]],
                          input=doc["index"], capture_output=True, text=True, timeout=120)


def test_the_control_machine_checks_the_id_and_lists_what_hosts_may_ask_for(made: Made):
    got = index_check(made.out, made.id)
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert doc["id"] == made.id and doc["manifest_path"] == "manifests/test.toml"
    listed = {m["path"] for m in json.loads((made.out / "index.json").read_text())["members"]}
    assert set(doc["files"]) == listed | {"index.json"} | ({"index.json.sig"} if made.key else set())
    assert doc["index"] == (made.out / "index.json").read_text()
    wrong = index_check(made.out, "0" * 64)
    assert wrong.returncode == 1 and f"is bundle {made.id}, not sd_env_bundle_id {'0' * 64}: refused" in wrong.stderr
    neither = index_check(made.out)
    assert neither.returncode == 1 and "the bundle is unanchored" in neither.stderr


def test_the_control_machine_never_packs_a_path_outside_the_bundle(made: Made, tmp_path):
    for rel, how in (("../secret", "parent"), ("/etc/hostname", "absolute"), ("packages/six-link.whl", "link")):
        copy = tmp_path / how
        shutil.copytree(made.out, copy)
        if how == "link":
            (copy / rel).symlink_to("/etc/hostname")
        doc = json.loads((copy / "index.json").read_text())
        doc["members"].append({"path": rel, "size": 1, "sha256": "0" * 64, "kind": "package"})
        (copy / "index.json").write_text(json.dumps(doc))
        got = index_check(copy, hashlib.sha256((copy / "index.json").read_bytes()).hexdigest())
        assert got.returncode == 1 and f"bundle member {rel!r} is not a confined path to a plain file" in got.stderr


@needs_ssh_keygen
def test_the_control_machine_checks_a_signature(made: Made, tmp_path):
    assert made.allowed_signers is not None
    got = index_check(made.out, "", str(made.allowed_signers))
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["signed_by"] == "builder@example.org"
    copy = copy_of(made, tmp_path)
    index = copy / "index.json"
    index.write_text(index.read_text().replace('"created": "2', '"created": "3', 1))
    bad = index_check(copy, "", str(made.allowed_signers))
    assert bad.returncode == 1 and "does not verify against" in bad.stderr


def test_a_host_prunes_only_a_folder_of_the_roles_own(made: Made, tmp_path):
    index = index_check(made.out, made.id).stdout
    home = tmp_path / "home"
    # someone's data, no mark of the role's: refused, nothing deleted
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    (data / "state.json").write_text("{}")
    (data / "datasets" / "captions.jsonl").write_text("{}\n")
    got = needs(data, index, home)
    assert got.returncode == 1 and "holds files and was not made by this role" in got.stderr
    assert (data / "state.json").is_file() and (data / "datasets" / "captions.jsonl").is_file()
    # the home, or a folder above it
    for dest in (home, tmp_path):
        refused = needs(dest, index, home)
        assert refused.returncode == 1 and "is the install folder" in refused.stderr
    # a new folder: everything is needed, nothing pruned
    dest = home / "bundle"
    first = json.loads(needs(dest, index, home).stdout)
    assert first["pruned"] == [] and "index.json" in first["need"] and len(first["need"]) > 10
    # the role's own folder (its mark beside it): an unlisted file goes, a listed one that is right stays
    shutil.copytree(made.out, dest)
    (dest / "packages" / "stale-1.0-py3-none-any.whl").write_bytes(b"PK")
    (home / "bundle.copied").write_text("copying\n")
    again = json.loads(needs(dest, index, home).stdout)
    assert again == {"need": [], "pruned": ["packages/stale-1.0-py3-none-any.whl"]}


def test_a_host_never_asks_for_a_path_outside_its_folder(made: Made, tmp_path):
    doc = json.loads(index_check(made.out, made.id).stdout)
    crafted = json.loads(doc["index"])
    crafted["members"].append({"path": "../../etc/shadow", "size": 1, "sha256": "0" * 64, "kind": "extra"})
    doc["index"] = json.dumps(crafted)
    got = needs(tmp_path / "home" / "bundle", json.dumps(doc), tmp_path / "home")
    assert got.returncode == 0 and "../../etc/shadow" not in json.loads(got.stdout)["need"]
