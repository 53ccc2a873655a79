"""Offline bundles on a small manifest: create, verify, install with no network at all.

The manifest is the tiny upstream of conftest.py (a git repo, a patch) plus a
hashed lock of two small pure-Python wheels. The bundle is made once per
session (it downloads six, idna, sd-env's dependencies and uv through the
configured index); everything after that runs offline. This machine's pip
config (local indexes that hold six) stays in the environment on purpose:
sd-env must ignore it by itself, or the "missing wheel" tests would pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sd_env.bundle import create as bundle_create
from sd_env.bundle import format as bundle
from sd_env.bundle import install as bundle_install
from sd_env.bundle import trust as bundle_trust
from sd_env.cli import main
from sd_env.core.manifest import Component
from sd_env.errors import StepError
from sd_env.patching import sources
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from tests.conftest import ROOT, SETUP, git
from tests.kit.bundlekit import (
    IDNA,
    PINS,
    SD_ENV,
    SIX,
    copy_of,
    make_project,
    needs_unshare,
    offline,
    outside_connects,
    site_of,
    tree_hash,
)


@needs_unshare
def test_the_connect_detector_sees_a_real_attempt(tmp_path):
    """The check below could never fail if strace recorded nothing: show it records a refused connect."""
    trace = tmp_path / "trace"
    code = "import socket\ntry:\n    socket.create_connection(('10.1.2.3', 9), timeout=1)\nexcept OSError:\n    pass\n"
    got = offline([sys.executable, "-c", code], trace)
    assert got.returncode == 0, got.stderr
    assert any("10.1.2.3" in line for line in outside_connects(trace))


# -- create and verify ------------------------------------------------------------------------------------
def test_create_packs_exactly_the_lock_histories_patches_tool_and_extras(made, capsys):
    index = json.loads((made.out / "index.json").read_text())
    paths = {m["path"]: m for m in index["members"]}
    assert {p for p in paths if p.startswith("packages/")} == {SIX, IDNA}
    assert paths[SIX]["sha256"] == PINS["six==1.16.0"]
    assert {"git/tinypkg.bundle", "manifests/test.toml", "manifests/test.pypi.lock.txt", "patches/tpu.diff",
            "extra/weights/unet/model.bin", "extra/weights/model_index.json"} <= set(paths)
    assert {p for p, m in paths.items() if m["kind"] == "bootstrap"} == set(bundle_create.BOOTSTRAP)
    assert os.access(made.out / "bootstrap.sh", os.X_OK)
    tool = [p for p in paths if p.startswith("tool/")]
    assert any(p.startswith("tool/sd_env-") for p in tool) and any(p.startswith("tool/uv-") for p in tool)
    assert any(p.startswith("tool/rich-") for p in tool) and any(p.startswith("tool/tomlkit-") for p in tool)
    assert len({m["sha256"] for m in index["members"] if m["path"].endswith(".whl")}) == \
        len([p for p in paths if p.endswith(".whl")])  # no wheel twice
    assert index["manifest_name"] == "test"
    assert index["components"][0]["commit"] == made.commit and index["components"][0]["source"] == "git"
    assert not list(made.out.parent.glob("*.partial"))
    capsys.readouterr()
    assert main(["bundle", "verify", str(made.out)]) == 0
    assert "ok: " in capsys.readouterr().out
    assert main(["bundle", "verify", str(made.out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["ok"], doc["manifest"], doc["members"]) == (True, "test", len(paths))


def test_create_refuses_an_existing_folder(made, capsys):
    assert main(["bundle", "create", str(made.out), "-m", str(made.project.manifest)]) == 2
    assert "already exists" in capsys.readouterr().err


# -- install with no network --------------------------------------------------------------------------------
@needs_unshare
def test_install_from_the_bundle_with_no_network_at_all(made, tmp_path, fresh_target):
    home, trace = tmp_path / "home", tmp_path / "connects"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SD_ENV_HOME", "SD_ENV_MANIFEST")}
    got = offline([SD_ENV, "install", "--bundle", str(made.out), "--home", str(home), "--python", str(fresh_target),
                   "--json"], trace, env=env)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert outside_connects(trace) == []
    report = json.loads(got.stdout)
    steps = {(r["component"], r["step"]): r for r in report["results"]}
    assert "installed 2 packages with uv" in steps[("env", "lock")]["detail"]
    assert "from the bundle (git/tinypkg.bundle, no network)" in steps[("tinypkg", "fetch")]["detail"]
    assert steps[("tinypkg", "patch")]["status"] == "ok"
    checkout = home / "src" / "tinypkg"
    assert git(checkout, "rev-parse", "HEAD") == made.commit
    assert git(checkout, "remote", "get-url", "origin") == str(made.out / "git" / "tinypkg.bundle")
    assert "torch_tpu" in subprocess.run([str(fresh_target), "-c", "import six, idna, tinypkg.core as c; "
                                          "print(c.scaler_for('tpu'))"], capture_output=True, text=True).stdout

    # verify --quick, still offline: it needs torch for the Linear smoke test, which this tiny lock
    # does not have, so that one row fails; everything that reads the environment passes.
    manifest = made.out / "manifests" / "test.toml"
    got = offline([SD_ENV, "verify", "--quick", "--json", "-m", str(manifest), "--home", str(home), "--python",
                   str(fresh_target)], tmp_path / "connects-verify", env=env)
    checks = {c["name"]: c for c in json.loads(got.stdout)["checks"]}
    statuses = [checks[n]["status"] for n in ("interpreter", "pins", "sources+patches")]
    assert statuses == ["ok"] * 3, checks["pins"]["detail"]
    assert checks["pins"]["detail"].startswith("2 locked packages at their versions")
    assert checks["linear smoke"]["status"] == "fail" and "torch" in checks["linear smoke"]["detail"]
    assert outside_connects(tmp_path / "connects-verify") == []
    # a second run plans nothing
    again = offline([SD_ENV, "install", "--bundle", str(made.out), "--home", str(home), "--python",
                     str(fresh_target), "--json"], tmp_path / "connects-again", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout


@needs_unshare
def test_a_wheel_missing_from_the_bundle_stops_the_install_by_name(made, tmp_path, fresh_target):
    copy = copy_of(made, tmp_path)
    (copy / SIX).unlink()
    before = tree_hash(site_of(fresh_target))
    got = offline([SD_ENV, "install", "--bundle", str(copy), "--home", str(tmp_path / "home"), "--python",
                   str(fresh_target)], tmp_path / "connects")
    assert got.returncode == 1
    assert f"error: bundle member {SIX} is missing" in got.stderr
    assert outside_connects(tmp_path / "connects") == []
    assert tree_hash(site_of(fresh_target)) == before and not (tmp_path / "home" / "src").exists()


@needs_unshare
@pytest.mark.parametrize("use_uv", [True, False], ids=["uv", "pip"])
def test_the_installers_look_nowhere_but_the_bundle(made, tmp_path, fresh_target, use_uv):
    """Below the index check: pip and uv themselves, handed a bundle without six, fail naming
    it instead of finding it in this machine's pip config or on the network."""
    copy = copy_of(made, tmp_path)
    (copy / SIX).unlink()
    code = ("import sys\nfrom pathlib import Path\nfrom sd_env.bundle import format as bundle\n"
            "from sd_env.bundle import install as bundle_install, trust as bundle_trust\n"
            "from sd_env.core import lockfile\n"
            "from sd_env.errors import StepError\nfrom sd_env.system.runner import Runner\n"
            "root = Path(sys.argv[1])\nlock = lockfile.read(root / 'manifests/test.pypi.lock.txt')\n"
            "checked = bundle_trust.Checked(root, bundle.read_index(root), None, lock, 0,\n"
            "                               bundle_trust.Anchor('', 'none'))\n"
            "try:\n    bundle_install.install_lock(Runner(), Path(sys.argv[2]), checked, Path(sys.argv[3]), "
            f"use_uv={use_uv})\nexcept StepError as exc:\n    print(exc.message)\n    sys.exit(3)\n")
    got = offline([sys.executable, "-c", code, str(copy), str(fresh_target), str(tmp_path / "work")],
                  tmp_path / "connects")
    assert got.returncode == 3, got.stdout + got.stderr
    assert "the bundle has no artifact for six==1.16.0" in got.stdout
    assert outside_connects(tmp_path / "connects") == []


# -- corruption: each a clear error naming the member, nothing installed ------------------------------------
def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "flipped byte in a wheel": (lambda b: _flip(b / SIX), f"bundle member {SIX} has sha256"),
    "truncated wheel archive": (lambda b: _truncate(b / IDNA), f"bundle member {IDNA} is "),
    "missing git bundle": (lambda b: (b / "git" / "tinypkg.bundle").unlink(),
                           "bundle member git/tinypkg.bundle is missing"),
    "tampered patch": (lambda b: (b / "patches" / "tpu.diff").write_text(
        (b / "patches" / "tpu.diff").read_text().replace('"tpu"', '"xla"')), "bundle member patches/tpu.diff has"),
    "unlisted file": (lambda b: (b / "packages" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK"),
                      "files its index does not list: packages/evil-1.0-py3-none-any.whl"),
    "truncated index": (lambda b: _truncate(b / "index.json"), "corrupt index"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_damaged_bundle_is_refused_by_name_and_installs_nothing(made, tmp_path, fresh_target, capsys, case):
    copy = copy_of(made, tmp_path)
    damage, message = CORRUPTIONS[case]
    damage(copy)
    assert main(["bundle", "verify", str(copy)]) == 1
    assert message in capsys.readouterr().err
    site, home = site_of(fresh_target), tmp_path / "home"
    before = tree_hash(site)
    code = main(["install", "--bundle", str(copy), "--home", str(home), "--python", str(fresh_target)])
    assert code == 1
    assert message in capsys.readouterr().err
    assert tree_hash(site) == before and not home.exists()


def test_a_bundle_for_another_manifest_is_refused_naming_both(made, tmp_path, fresh_target, capsys):
    other, _ = make_project(tmp_path / "other", name="other")
    site = site_of(fresh_target)
    before = tree_hash(site)
    code = main(["install", "--bundle", str(made.out), "-m", str(other.manifest), "--home", str(tmp_path / "home"),
                 "--python", str(fresh_target)])
    err = capsys.readouterr().err
    assert code == 2
    assert "the bundle was made for manifest 'test'" in err and f"not {other.manifest} ('other'" in err
    assert tree_hash(site) == before and not (tmp_path / "home").exists()


@needs_unshare
def test_bootstrap_from_the_bundle_with_no_network(made, tmp_path, fresh_target):
    """./bootstrap.sh --bundle: sd-env's own venv from the bundle's wheels, then the install and
    verify, in a namespace with no network. verify fails only where it needs torch (not in the
    tiny lock): the Linear smoke test and the LoRA step."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST")}
    env.update(SD_ENV_HOME=str(home), SD_ENV_PYTHON=str(fresh_target), COLUMNS="200")
    got = offline([str(ROOT / "bootstrap.sh"), "--bundle", str(made.out)], tmp_path / "connects", env=env)
    text = got.stdout + got.stderr
    assert "installing sd-env into" in text and "from the bundle (its listed wheels only, by hash" in text, text[-3000:]
    assert outside_connects(tmp_path / "connects") == []
    tool = home / "tool" / "bin" / "python"
    shown = subprocess.run([str(tool), "-m", "pip", "show", "-f", "sd-env", "uv"], capture_output=True, text=True)
    assert "Name: sd-env" in shown.stdout and "Name: uv" in shown.stdout
    assert "Editable project location" not in shown.stdout  # the wheel, not this checkout
    assert "installed 2 packages with uv" in got.stdout
    assert got.returncode == 1 and "FAILED: linear smoke, lora step" in got.stdout, text[-3000:]


# -- git histories: a depth-1 checkout, and a component imported from its sdist ----------------------------
@needs_unshare
def test_the_bundles_own_bootstrap_installs_from_it_and_says_what_changed(made, tmp_path, fresh_target):
    """OUT/bootstrap.sh, run from a copy of the bundle with no repository around and no network:
    it installs from the bundle it lies in; with --json its stdout is install's one JSON document,
    and a re-run says nothing changed. A home inside the bundle is refused."""
    out = copy_of(made, tmp_path)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_MANIFEST")}
    env.update(SD_ENV_HOME=str(home), SD_ENV_PYTHON=str(fresh_target))
    runs = []
    for n in (1, 2):
        got = offline([str(out / "bootstrap.sh"), "--no-verify", "--json"], tmp_path / f"connects{n}", env=env,
                      cwd=tmp_path)
        assert got.returncode == 0, got.stderr[-3000:]
        assert outside_connects(tmp_path / f"connects{n}") == []
        runs.append(json.loads(got.stdout))  # nothing but the one document on stdout
    assert [d["command"] for d in runs] == ["install", "install"]
    assert [d["changed"] for d in runs] == [True, False]
    assert (home / "src" / "tinypkg").is_dir() and not (home / "venv").exists()  # SD_ENV_PYTHON was the target
    assert main(["bundle", "verify", str(out)]) == 0  # the runs left nothing inside the bundle
    env["SD_ENV_HOME"] = str(out / "home")
    got = subprocess.run([str(out / "bootstrap.sh"), "--no-verify"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert got.returncode == 2 and "is inside the bundle" in got.stderr


def _history_round_trip(comp, source_home: Paths, tmp_path: Path, reuse: tuple[Path, ...] = ()):
    out = tmp_path / "out"
    members = bundle_create._Members(out)
    hist = bundle_create._source(comp, source_home, source_home, members, Runner(),
                                 bundle_create.CreateOptions(out, reuse=reuse))
    index = bundle.Index("t", "manifests/t.toml", "0" * 64, None, None, "3.9", list(members.items.values()), [hist])
    checked = bundle_trust.Checked(out, index, None, None, 0, bundle_trust.Anchor("0" * 64, "none"))  # type: ignore[arg-type]
    target = Paths(tmp_path / "new-home")
    _detail, rec = bundle_install.fetch_component(comp, target, Runner(), checked, None)
    return hist, rec, target.checkout(comp.name)


def test_a_depth_one_checkout_is_bundled_and_cloned_back(tmp_path, upstream):
    first = git(upstream.repo, "rev-parse", "HEAD")
    upstream.write("src/tinypkg/__init__.py", '__version__ = "1.1"\n')
    second = upstream.release("v1.1")
    comp = Component("tinypkg", upstream.url, "v1.1", "1.1", second, (), "editable", False)
    home = Paths(tmp_path / "home")
    sources.fetch_git(comp, home.checkout("tinypkg"), home.work, Runner(), mirror=None, expect=second)
    hist, rec, checkout = _history_round_trip(comp, home, tmp_path)
    assert hist.shallow == (second,) and hist.ref == "refs/tags/v1.1" and first != second
    assert (rec.source, rec.commit) == ("git", second)
    assert git(checkout, "rev-parse", "HEAD") == git(checkout, "rev-parse", "v1.1^{commit}") == second


def tiny_sdist(where: Path) -> Path:
    """tinypkg-1.0.tar.gz as PyPI would serve it: one top folder, setup.py, the package."""
    import tarfile

    tree = where / "tinypkg-1.0"
    (tree / "src" / "tinypkg").mkdir(parents=True)
    (tree / "setup.py").write_text(SETUP)
    (tree / "src" / "tinypkg" / "__init__.py").write_text('__version__ = "1.0"\n')
    archive = where / "tinypkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="tinypkg-1.0")
    return archive


def test_a_component_pinned_by_its_sdist_travels_as_that_sdist(tmp_path, capsys):
    """The bundle carries the sdist the manifest pins (not a home's import of it) and the install
    imports it again: the same commit as any other import of that file, checked against the pin."""
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    archive = tiny_sdist(sdists)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    comp = Component("tinypkg", "https://github.com/acme/tinypkg.git", "v1.0", "1.0", None, (), "editable", True,
                     digest)
    elsewhere = sources.import_sdist(comp, archive, tmp_path / "elsewhere", tmp_path / "work", Runner())
    home = Paths(tmp_path / "home")
    hist, rec, new = _history_round_trip(comp, home, tmp_path, reuse=(sdists,))
    assert "sdist: bundling tinypkg-1.0.tar.gz" in capsys.readouterr().err
    assert (hist.source, hist.path, hist.sdist_sha256) == ("sdist", "sdist/tinypkg-1.0.tar.gz", digest)
    assert (rec.source, rec.commit, rec.sdist_sha256) == ("sdist", elsewhere.commit, digest)
    assert git(new, "rev-parse", "HEAD") == elsewhere.commit and git(new, "tag") == ""


def test_an_sdist_that_is_not_the_pinned_one_is_refused(tmp_path):
    sdists = tmp_path / "sdists"
    sdists.mkdir()
    archive = tiny_sdist(sdists)
    comp = Component("tinypkg", "https://github.com/acme/tinypkg.git", "v1.0", "1.0", None, (), "editable", True,
                     "0" * 64)
    with pytest.raises(StepError, match=r"has sha256 .* the manifest pins sdist_sha256 = 0000"):
        sources.import_sdist(comp, archive, tmp_path / "dest", tmp_path / "work", Runner())
    assert not (tmp_path / "dest").exists()
