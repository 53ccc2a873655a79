"""A bundle vouches for nothing by itself: each attack of issue 17, tried on a copy of a real bundle.

Every crafted bundle here is self-consistent where the attacker can make it so (a changed member's
size and sha256 rewritten in index.json), which is exactly what an index cannot catch alone: the
anchor (--expect ID, a signature), the trusted checkout (-m), the manifest's pins and the path rules
must. Where a crafted wheel would run code (a .pth file), it writes a marker: the marker must never
appear.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sd_env.cli import main
from tests.conftest import git
from tests.kit.bundlekit import (
    SIX,
    Made,
    copy_of,
    make_key,
    needs_ssh_keygen,
    site_of,
    tree_hash,
)
from tests.kit.pythonkit import interpreter_for


# -- crafting -------------------------------------------------------------------------------------------
def rewrite_index(root: Path, change) -> str:
    """Apply `change(doc)` to root/index.json, written as sd-env writes it; returns the new bundle id."""
    path = root / "index.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    (root / "index.json.sig").unlink(missing_ok=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refresh(doc: dict, root: Path, rel: str, kind: str | None = None) -> None:
    """The member `rel` listed with its file's current size and sha256 (added when absent)."""
    data = (root / rel).read_bytes()
    entry = {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "kind": kind}
    for m in doc["members"]:
        if m["path"] == rel:
            m.update(size=entry["size"], sha256=entry["sha256"])
            return
    doc["members"].append(entry)


def marker_wheel(folder: Path, name: str, version: str, marker: Path) -> Path:
    """A real wheel whose .pth file writes `marker` whenever an interpreter starts with it installed."""
    files = {
        f"{name}/__init__.py": b"",
        f"zz_{name}_hook.pth": f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n".encode(),
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n",
    }
    record = [f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for p, d in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"])
                                                   + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for rel, data in files.items():
            whl.writestr(rel, data)
    return path


def install(bundle: Path, home: Path, python: Path, *flags: str) -> int:
    return main(["install", "--bundle", str(bundle), "--home", str(home), "--python", str(python), *flags])


def untouched(python: Path, home: Path, before: str) -> bool:
    return tree_hash(site_of(python)) == before and not (home / "src").exists()


# -- the anchor: --expect ID ----------------------------------------------------------------------------
def test_create_and_verify_print_the_bundle_id_and_install_checks_it(made, tmp_path, fresh_target, capsys):
    assert main(["bundle", "verify", str(made.out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["id"] == made.id and doc["anchored"] == "none"
    assert main(["bundle", "verify", str(made.out), "--expect", f"sha256:{made.id}"]) == 0
    assert f"bundle id {made.id} (expected" in capsys.readouterr().out
    home = tmp_path / "home"
    assert install(made.out, home, fresh_target, "--expect", made.id, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bundle"] == {"id": made.id, "anchored": "id", "signer": None}
    recorded = json.loads((home / "state.json").read_text())["bundle"]
    assert (recorded["id"], recorded["anchored"], recorded["path"]) == (made.id, "id", str(made.out))


def test_a_bundle_without_an_anchor_says_so(made, tmp_path, fresh_target, capsys):
    assert install(made.out, tmp_path / "home", fresh_target) == 0
    assert f"bundle id {made.id}: UNANCHORED" in capsys.readouterr().err


def test_another_bundle_than_the_expected_one_is_refused_before_use(made, tmp_path, fresh_target, capsys):
    copy = copy_of(made, tmp_path)
    rewrite_index(copy, lambda doc: doc.update(created="2030-01-01T00:00:00Z"))  # any change: another id
    home, before = tmp_path / "home", tree_hash(site_of(fresh_target))
    assert install(copy, home, fresh_target, "--expect", made.id) == 1
    err = capsys.readouterr().err
    assert f"not the expected {made.id}: refused, nothing of it was used" in err
    assert untouched(fresh_target, home, before) and not home.exists()
    assert install(made.out, home, fresh_target, "--expect", "12ab") == 2
    assert "--expect '12ab' is not a bundle id" in capsys.readouterr().err
    assert main(["install", "--expect", made.id, "--home", str(home), "--python", str(fresh_target)]) == 2
    assert "they need --bundle OUT" in capsys.readouterr().err


# -- 1: bootstrap runs only listed wheels, by hash --------------------------------------------------------
def test_an_unlisted_wheel_in_tool_never_runs(made, tmp_path, fresh_target):
    """./bootstrap.sh --bundle used to let pip pick any wheel in tool/: an unlisted, higher-versioned
    `packaging` with a .pth hook ran in sd-env's own venv before anything checked the bundle."""
    copy = copy_of(made, tmp_path)
    marker = tmp_path / "marker"
    marker_wheel(copy / "tool", "packaging", "99.0", marker)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST")}
    env.update(SD_ENV_HOME=str(tmp_path / "home"), SD_ENV_PYTHON=str(fresh_target))
    got = subprocess.run([str(copy / "bootstrap.sh"), "--no-verify", "--expect", made.id], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 1, got.stderr[-3000:]
    assert "files its index does not list: tool/packaging-99.0-py3-none-any.whl" in got.stderr
    assert not marker.exists()
    shown = subprocess.run([str(tmp_path / "home" / "tool" / "bin" / "python"), "-m", "pip", "list"],
                           capture_output=True, text=True).stdout
    assert "99.0" not in shown and "sd-env" in shown


def test_a_listed_tool_wheel_that_does_not_match_stops_bootstrap(made, tmp_path, fresh_target):
    copy = copy_of(made, tmp_path)
    own = next((copy / "tool").glob("sd_env-*.whl"))
    own.write_bytes(own.read_bytes() + b"\0")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST")}
    env.update(SD_ENV_HOME=str(tmp_path / "home"), SD_ENV_PYTHON=str(fresh_target))
    got = subprocess.run([str(copy / "bootstrap.sh"), "--no-verify"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert got.returncode == 1 and f"bundle member tool/{own.name} does not match the index" in got.stderr
    assert not (tmp_path / "home" / "tool").exists()


def test_bootstrap_checks_the_expected_id_before_anything_else(made, tmp_path, fresh_target):
    copy = copy_of(made, tmp_path)
    rewrite_index(copy, lambda doc: doc.update(created="2030-01-01T00:00:00Z"))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST")}
    env.update(SD_ENV_HOME=str(tmp_path / "home"), SD_ENV_PYTHON=str(fresh_target))
    got = subprocess.run([str(copy / "bootstrap.sh"), "--expect", made.id], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 1 and f"not the expected {made.id}" in got.stderr
    assert not (tmp_path / "home").exists()


# -- 2: torch_tpu is always a listed, hashed member ------------------------------------------------------
def test_a_torch_tpu_path_outside_the_bundle_is_refused(made, tmp_path, fresh_target, capsys):
    copy = copy_of(made, tmp_path)
    evil = marker_wheel(tmp_path / "evil", "torch_tpu", "2.1.0.post1", tmp_path / "marker")
    new_id = rewrite_index(copy, lambda doc: doc.update(torch_tpu=f"../evil/{evil.name}"))
    home, before = tmp_path / "home", tree_hash(site_of(fresh_target))
    assert main(["bundle", "verify", str(copy), "--expect", new_id]) == 1
    assert f"the torch_tpu wheel '../evil/{evil.name}' is refused: not a listed torch_tpu member" in \
        capsys.readouterr().err
    assert install(copy, home, fresh_target, "--expect", new_id) == 1
    assert untouched(fresh_target, home, before) and not (tmp_path / "marker").exists()


def test_a_torch_tpu_member_must_be_the_named_wheel(made, tmp_path, capsys):
    copy = copy_of(made, tmp_path)
    marker_wheel(copy / "torch_tpu", "torch_tpu", "2.1.0.post1", tmp_path / "marker")
    rewrite_index(copy, lambda doc: refresh(doc, copy, "torch_tpu/torch_tpu-2.1.0.post1-py3-none-any.whl",
                                            "torch_tpu"))
    assert main(["bundle", "verify", str(copy)]) == 1
    assert "a torch_tpu member the index does not name as its wheel" in capsys.readouterr().err


# -- 3: the trusted checkout and the manifest's pins win ------------------------------------------------
def swap_six(copy: Path, marker: Path) -> None:
    """Another six wheel, its hash in the bundle's lock and the index: a self-consistent bundle."""
    evil = marker_wheel(copy / "evil", "six", "1.16.0", marker)
    lock = copy / "manifests" / "test.pypi.lock.txt"
    old = hashlib.sha256((copy / SIX).read_bytes()).hexdigest()
    new = hashlib.sha256(evil.read_bytes()).hexdigest()
    lock.write_text(lock.read_text().replace(old, new))
    os.replace(evil, copy / SIX)
    (copy / "evil").rmdir()

    def change(doc: dict) -> None:
        refresh(doc, copy, SIX)
        refresh(doc, copy, "manifests/test.pypi.lock.txt")
    rewrite_index(copy, change)


def test_a_wheel_swapped_with_its_lock_line_loses_to_the_trusted_checkout(made: Made, tmp_path, fresh_target,
                                                                          capsys):
    copy = copy_of(made, tmp_path)
    marker = tmp_path / "marker"
    swap_six(copy, marker)
    assert main(["bundle", "verify", str(copy)]) == 0  # self-consistent: the index alone cannot tell
    capsys.readouterr()
    home, before = tmp_path / "home", tree_hash(site_of(fresh_target))
    assert install(copy, home, fresh_target, "-m", str(made.project.manifest)) == 1
    err = capsys.readouterr().err
    assert "the bundle's manifests/test.pypi.lock.txt is not the checkout's" in err
    assert untouched(fresh_target, home, before) and not marker.exists()
    assert install(copy, home, fresh_target, "--expect", made.id) == 1  # and the id changed
    assert untouched(fresh_target, home, before) and not marker.exists()


def test_a_shipped_stack_name_for_m_is_compared_not_crashed(made, tmp_path, fresh_target, capsys):
    assert install(made.out, tmp_path / "home", fresh_target, "-m", "sc7-sd14-lora") == 2
    err = capsys.readouterr().err
    assert "the bundle was made for manifest 'test'" in err and "sc7-sd14-lora.toml" in err
    assert "Traceback" not in err


def test_a_git_history_at_another_commit_is_refused(made: Made, tmp_path, fresh_target, capsys):
    """Another history under the same tag, with the index rewritten to match: the manifest's
    commit decides. With the index left saying the old commit, the clone's own tip decides."""
    upstream = made.project.root.parent / "upstream" / "tinypkg"
    work = tmp_path / "evil-upstream"
    shutil.copytree(upstream, work)
    (work / "src" / "tinypkg" / "core.py").write_text("raise SystemExit('evil')\n")
    git(work, "commit", "-qam", "evil")
    git(work, "tag", "-f", "-a", "v1.0", "-m", "v1.0")
    evil = git(work, "rev-parse", "HEAD")
    for lie in (False, True):
        copy = tmp_path / f"copy-{lie}"
        shutil.copytree(made.out, copy)
        (copy / "git" / "tinypkg.bundle").unlink()
        git(work, "bundle", "create", str(copy / "git" / "tinypkg.bundle"), "refs/tags/v1.0")

        def change(doc: dict, lie: bool = lie, copy: Path = copy) -> None:
            refresh(doc, copy, "git/tinypkg.bundle")
            if not lie:
                doc["components"][0].update(commit=evil, shallow=[])
        rewrite_index(copy, change)
        home = tmp_path / f"home-{lie}"
        assert install(copy, home, fresh_target) == 1
        err = capsys.readouterr().err
        want = (f"refs/tags/v1.0 is {evil}, the manifest pins {made.commit}" if lie else
                f"holds tinypkg at {evil}, the manifest pins {made.commit}")
        assert want in err
        assert not (home / "src" / "tinypkg").exists()


def test_a_history_relabelled_as_an_sdist_needs_the_manifests_sdist_pin(made, tmp_path, capsys):
    copy = copy_of(made, tmp_path)
    (copy / "sdist").mkdir()
    shutil.make_archive(str(copy / "sdist" / "tinypkg-1.0"), "gztar", root_dir=made.project.root.parent / "upstream")
    (copy / "git" / "tinypkg.bundle").unlink()

    def change(doc: dict) -> None:
        doc["members"] = [m for m in doc["members"] if m["path"] != "git/tinypkg.bundle"]
        refresh(doc, copy, "sdist/tinypkg-1.0.tar.gz", "sdist")
        doc["components"][0].update(source="sdist", path="sdist/tinypkg-1.0.tar.gz", ref="", commit="", shallow=[])
    rewrite_index(copy, change)
    assert main(["bundle", "verify", str(copy)]) == 1
    assert "tinypkg: the bundle carries its sdist, but the manifest pins no sdist_sha256" in capsys.readouterr().err


def test_a_manifest_that_pins_neither_commit_nor_sdist_cannot_be_bundled(made, tmp_path, capsys):
    project = made.project
    text = project.manifest.read_text()
    unpinned = tmp_path / "manifests" / "test.toml"
    shutil.copytree(project.manifest.parent, unpinned.parent)
    shutil.copytree(project.root / "patches", tmp_path / "patches")
    unpinned.write_text("\n".join(line for line in text.splitlines() if not line.startswith("commit")))
    code = main(["bundle", "create", str(tmp_path / "out"), "-m", str(unpinned), "--home", str(project.home)])
    err = capsys.readouterr().err
    assert code == 2 and "tinypkg: the manifest pins neither a commit nor an sdist_sha256" in err
    assert not (tmp_path / "out").exists()


def test_a_lock_line_that_is_an_option_is_refused(made, tmp_path, fresh_target, capsys):
    copy = copy_of(made, tmp_path)
    lock = copy / "manifests" / "test.pypi.lock.txt"
    lock.write_text("--find-links https://example.org/wheels\n" + lock.read_text())
    rewrite_index(copy, lambda doc: refresh(doc, copy, "manifests/test.pypi.lock.txt"))
    home = tmp_path / "home"
    assert install(copy, home, fresh_target) == 2
    assert "test.pypi.lock.txt:1: an option line: '--find-links https://example.org/wheels'" in \
        capsys.readouterr().err
    assert not (home / "src").exists()


# -- 4: paths confined ------------------------------------------------------------------------------------
CONFINED = {
    "parent": ({"path": "../secret", "kind": "extra"}, "not normalised"),
    "absolute": ({"path": "/etc/hostname", "kind": "extra"}, "absolute"),
    "dotdot inside": ({"path": "extra/weights/../../../x", "kind": "extra"}, "not normalised"),
    "empty part": ({"path": "packages//six.whl", "kind": "package"}, "not normalised"),
    "wrong folder": ({"path": "tool/six-1.16.0-py2.py3-none-any.whl", "kind": "package"},
                     "a package member lives under packages/"),
    "foreign bootstrap": ({"path": "evil.sh", "kind": "bootstrap"}, "the bootstrap members are"),
    "project file in a kind's folder": ({"path": "packages/x.diff", "kind": "patch"},
                                        "a patch file cannot live under packages/"),
    "unknown kind": ({"path": "misc/x", "kind": "script"}, "unknown kind 'script'"),
    "the index itself": ({"path": "index.json", "kind": "manifest"}, "the index and its signature are never members"),
}


@pytest.mark.parametrize("case", list(CONFINED))
def test_member_paths_are_confined(made, tmp_path, capsys, case):
    copy = copy_of(made, tmp_path)
    member, why = CONFINED[case]
    rewrite_index(copy, lambda doc: doc["members"].append({**member, "size": 1, "sha256": "0" * 64}))
    assert main(["bundle", "verify", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"member {member['path']!r} is refused: {why}" in err


def test_a_member_listed_twice_is_refused(made, tmp_path, capsys):
    copy = copy_of(made, tmp_path)
    rewrite_index(copy, lambda doc: doc["members"].append(dict(next(m for m in doc["members"] if m["path"] == SIX))))
    assert main(["bundle", "verify", str(copy)]) == 1
    assert f"member {SIX!r} is refused: listed twice" in capsys.readouterr().err


def test_symbolic_links_are_refused_as_members_and_as_folders(made, tmp_path, fresh_target, capsys):
    copy = copy_of(made, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(str(copy / SIX), outside / "six.whl")
    (copy / SIX).symlink_to(outside / "six.whl")  # the same bytes, behind a link
    home, before = tmp_path / "home", tree_hash(site_of(fresh_target))
    assert install(copy, home, fresh_target) == 1
    assert f"bundle member {SIX}: {SIX} is a symbolic link" in capsys.readouterr().err
    assert untouched(fresh_target, home, before)
    copy2 = tmp_path / "copy2"
    shutil.copytree(made.out, copy2)
    shutil.move(str(copy2 / "git"), outside / "git")
    (copy2 / "git").symlink_to(outside / "git")
    assert main(["bundle", "verify", str(copy2)]) == 1
    assert "bundle member git/tinypkg.bundle: git is a symbolic link" in capsys.readouterr().err


def test_a_bundle_of_the_old_format_is_refused_with_the_fix(made, tmp_path, capsys):
    copy = copy_of(made, tmp_path)
    rewrite_index(copy, lambda doc: doc.update(format=1))
    assert main(["bundle", "verify", str(copy)]) == 1
    assert "bundle format 1, this sd-env reads 2 or 3" in capsys.readouterr().err


# -- signatures (OpenSSH's ssh-keygen -Y) -------------------------------------------------------------
@needs_ssh_keygen
def test_a_signed_bundle_installs_with_its_signers_file(made: Made, tmp_path, fresh_target, capsys):
    assert (made.out / "index.json.sig").is_file()
    assert main(["bundle", "verify", str(made.out), "--allowed-signers", str(made.allowed_signers), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["anchored"], doc["signer"]) == ("signature", "builder@example.org")
    home = tmp_path / "home"
    assert install(made.out, home, fresh_target, "--allowed-signers", str(made.allowed_signers), "--expect",
                   made.id) == 0
    assert "signed by builder@example.org" in capsys.readouterr().err
    assert json.loads((home / "state.json").read_text())["bundle"]["anchored"] == "id and signature"


@needs_ssh_keygen
def test_a_flipped_byte_in_a_signed_index_is_refused(made: Made, tmp_path, fresh_target, capsys):
    copy = copy_of(made, tmp_path)
    index = copy / "index.json"
    text = index.read_text()
    index.write_text(text.replace('"created": "2', '"created": "3', 1))  # still valid JSON
    home, before = tmp_path / "home", tree_hash(site_of(fresh_target))
    assert install(copy, home, fresh_target, "--allowed-signers", str(made.allowed_signers)) == 1
    assert "index.json.sig does not verify against" in capsys.readouterr().err
    assert untouched(fresh_target, home, before) and not home.exists()


@needs_ssh_keygen
def test_another_signer_and_no_signature_are_refused(made: Made, tmp_path, fresh_target, capsys):
    _key, mallory = make_key(tmp_path / "keys", "mallory@example.org")
    assert main(["bundle", "verify", str(made.out), "--allowed-signers", str(mallory)]) == 1
    assert "does not verify against" in capsys.readouterr().err
    copy = copy_of(made, tmp_path)
    (copy / "index.json.sig").unlink()
    assert main(["bundle", "verify", str(copy), "--allowed-signers", str(made.allowed_signers)]) == 1
    assert "has no index.json.sig: the bundle is not signed" in capsys.readouterr().err


@needs_ssh_keygen
def test_bootstrap_checks_the_signature_before_anything_else(made: Made, tmp_path, fresh_target):
    _key, mallory = make_key(tmp_path / "keys", "mallory@example.org")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST")}
    env.update(SD_ENV_HOME=str(tmp_path / "home"), SD_ENV_PYTHON=str(fresh_target))
    got = subprocess.run([str(made.out / "bootstrap.sh"), "--allowed-signers", str(mallory)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 1 and "index.json.sig does not verify against" in got.stderr
    assert not (tmp_path / "home").exists()


# -- 7, 8: a leftover OUT.partial, and the home inside the bundle ----------------------------------------
def test_create_over_a_leftover_partial_keeps_nothing_stale(made: Made, tmp_path, capsys):
    out = tmp_path / "out"
    partial = tmp_path / "out.partial"
    (partial / "packages").mkdir(parents=True)
    (partial / "packages" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    (partial / "extra" / "old").mkdir(parents=True)
    (partial / "extra" / "old" / "weights.bin").write_bytes(b"x" * 10)
    (partial / "git").mkdir()
    (partial / "git" / "gone.bundle").write_bytes(b"x")
    project = made.project
    assert main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home),
                 "--reuse", str(made.out / "packages")]) == 0
    assert "removed 2 files left in out.partial by an earlier run" in capsys.readouterr().err
    assert main(["bundle", "verify", str(out)]) == 0
    assert not (out / "extra").exists() and not (out / "git" / "gone.bundle").exists() and not partial.exists()


def test_a_home_inside_the_bundle_is_refused(made, tmp_path, fresh_target, capsys, monkeypatch):
    copy = copy_of(made, tmp_path)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("SD_ENV_HOME", raising=False)
    assert main(["install", "--bundle", ".", "--python", str(fresh_target)]) == 2
    assert "is inside the bundle" in capsys.readouterr().err
    assert main(["bundle", "verify", str(copy)]) == 0  # nothing was written into it
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST")}
    env.update(SD_ENV_HOME=str(copy), SD_ENV_PYTHON=str(fresh_target))
    got = subprocess.run([str(copy / "bootstrap.sh"), "--no-verify"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert got.returncode == 2 and "is inside the bundle" in got.stderr
    assert main(["bundle", "verify", str(copy)]) == 0


# -- 6: the bundle's own Python version picks the interpreter -------------------------------------------
def _python(minor: int) -> str | None:
    found = interpreter_for(f"3.{minor}")  # the user's own pyenv, not root's (closed to other users)
    return str(found) if found else None


@pytest.mark.skipif(_python(11) is None or sys.version_info[:2] == (3, 11),
                    reason="skipped: needs a Python 3.11 besides the tests' own interpreter")
def test_a_bundle_for_python_3_11_bootstraps_where_python_3_9_comes_first(made: Made, tmp_path):
    """The tool's wheels are for the bundle's Python; bootstrap used to take python3.9 first and fail
    (`No matching distribution found for tomli`)."""
    py311 = _python(11)
    assert py311 is not None
    project = made.project
    manifest = project.manifest.read_text().replace(f'python = "{sys.version_info[0]}.{sys.version_info[1]}"',
                                                    'python = "3.11"')
    folder = tmp_path / "project"
    shutil.copytree(project.root, folder, ignore=shutil.ignore_patterns("home"))
    (folder / "manifests" / "test.toml").write_text(manifest)
    out = tmp_path / "out311"
    assert main(["bundle", "create", str(out), "-m", str(folder / "manifests" / "test.toml"), "--home",
                 str(tmp_path / "create-home"), "--reuse", str(made.out / "packages")]) == 0
    target = tmp_path / "target311"
    subprocess.run([py311, "-m", "venv", str(target)], check=True)
    # The editable build needs setuptools' bdist_wheel (the era locks pin wheel; this tiny lock does not).
    subprocess.run([str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "wheel"], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3.9").symlink_to(sys.executable)  # the tests' own 3.9 (or whatever runs them), first
    (bin_dir / "python3").symlink_to(py311)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST", "SD_ENV_PYTHON")}
    env.update(SD_ENV_HOME=str(tmp_path / "home"), PATH=f"{bin_dir}:/usr/bin:/bin")
    got = subprocess.run([str(out / "bootstrap.sh"), "--no-verify", "--python", str(target / "bin" / "python")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert got.returncode == 0, got.stderr[-3000:]
    tool = tmp_path / "home" / "tool" / "bin" / "python"
    assert subprocess.run([str(tool), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                          text=True).stdout.strip() == "(3, 11)"
