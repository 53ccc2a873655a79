"""Bundles carry the stack's Python: `bundle create` packs the standalone CPython (from the session's
mirror, conftest.standalone_mirror) as a `python/` member, listed, hashed and confined like every
member; `install --bundle` and the bundle's own bootstrap.sh unpack it on a host without that
Python, with no network (`unshare -n` where root can make one) and, for bootstrap.sh, with
nothing on the PATH but coreutils, bash, sed, grep, gzip, tar and git.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sd_env.bundle import format as bundle
from sd_env.bundle import trust as bundle_trust
from sd_env.bundle.format import BundleError
from sd_env.cli import main
from tests.conftest import ROOT
from tests.kit.bundlekit import BUILD_PINS, SD_ENV, make_project, offline, outside_connects
from tests.kit.pythonkit import minimal_bin

HERE = f"{sys.version_info[0]}.{sys.version_info[1]}"
HOST_TOOLS = ("bash", "sed", "grep", "gzip", "tar", "git")  # what a host without Python needs, besides coreutils
can_unshare = os.geteuid() == 0 and shutil.which("unshare") is not None and shutil.which("strace") is not None


def index_of(out: Path) -> dict:
    return json.loads((out / "index.json").read_text())


def bundle_id(out: Path) -> str:
    return bundle_trust.anchor(out, None)[0].id  # type: ignore[arg-type]  # no signature: no runner needed


def test_the_bundle_lists_its_python_like_every_member(made, standalone_mirror):
    index = index_of(made.out)
    version = standalone_mirror.versions()[HERE]
    rel = index["interpreter"]
    machine = os.uname().machine
    assert rel == f"python/cpython-{version}-20990101-{machine}-unknown-linux-gnu-install_only_stripped.tar.gz"
    member = next(m for m in index["members"] if m["path"] == rel)
    assert member["kind"] == "python" and index["format"] == bundle.FORMAT == 3
    # the very archive the mirror served (uv checked it against the download metadata's sha256)
    served = next(standalone_mirror.root.glob(f"*/cpython-{version}+*.tar.gz"))
    assert member["sha256"] == bundle.sha256_file(served) and member["size"] == served.stat().st_size
    assert main(["bundle", "verify", str(made.out), "--expect", made.id]) == 0


@pytest.mark.parametrize(("change", "why"), [
    (lambda d: _move(d, "python/../tool/cpython-3.9.18.tar.gz"), "not normalised"),
    (lambda d: d.update(interpreter="packages/six-1.16.0-py2.py3-none-any.whl"), "not a listed python member"),
    (lambda d: _move(d, "tool/cpython-3.9.18.tar.gz"), "a python member lives under python/"),
    (lambda d: _move(d, "python/evil.tar.gz"), "not python/cpython-X.Y.Z...tar.gz"),
    (lambda d: d.update(interpreter=None), "a python member the index does not name as its interpreter"),
])
def test_the_python_member_is_confined(made, change, why):
    doc = index_of(made.out)
    change(doc)
    with pytest.raises(BundleError, match="refused") as info:
        bundle.read_index(made.out, json.dumps(doc).encode())
    assert why in info.value.message


def _move(doc: dict, rel: str) -> None:
    member = next(m for m in doc["members"] if m["path"] == doc["interpreter"])
    member["path"] = doc["interpreter"] = rel


def test_a_python_of_another_version_is_refused_and_an_older_index_has_none(made):
    doc = index_of(made.out)
    other = doc["interpreter"].replace(f"cpython-{HERE}.", "cpython-3.8.")
    _move(doc, other)
    index = bundle.read_index(made.out, json.dumps(doc).encode())
    with pytest.raises(BundleError, match=f"is not a Python {HERE}, which its manifest wants"):
        bundle_trust.complete(made.out, index)
    older = index_of(made.out)
    older.pop("interpreter")
    older["members"] = [m for m in older["members"] if m["kind"] != "python"]
    older["format"] = 2
    assert bundle.read_index(made.out, json.dumps(older).encode()).interpreter is None


# -- a host without the Python ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pybundle(tmp_path_factory) -> Path:
    """The small project with setuptools and wheel in its lock (a fresh venv builds the component
    with them), bundled with its Python; made through the configured index."""
    root = tmp_path_factory.mktemp("pybundle")
    project, _ = make_project(root, pins=BUILD_PINS)
    out = root / "bundle"
    assert main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home)]) == 0
    return out


def host_env(tmp_path: Path, *tools: str) -> dict[str, str]:
    """A host's environment: nothing on the PATH but coreutils and `tools`, a HOME of its own, no
    mirror or index settings (nothing may be downloaded anyway)."""
    return {"PATH": str(minimal_bin(tmp_path / "host-bin", *tools)), "HOME": str(tmp_path / "user"),
            "LANG": "C.UTF-8", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}


def run_offline(argv: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`argv` with no network where root can make a namespace (then no connect() may leave the host)."""
    if not can_unshare:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    got = offline(argv, tmp_path / "trace", env=env)
    assert outside_connects(tmp_path / "trace") == [], outside_connects(tmp_path / "trace")
    return got


def base_of(venv: Path) -> str:
    return next(line.split("=", 1)[1].strip() for line in (venv / "pyvenv.cfg").read_text().splitlines()
                if line.startswith("home"))


@pytest.mark.network
def test_install_bundle_on_a_host_without_the_python_unpacks_the_bundles(pybundle, tmp_path):
    home = tmp_path / "home"
    argv = [SD_ENV, "install", "--bundle", str(pybundle), "--expect", bundle_id(pybundle), "--home", str(home)]
    got = run_offline(argv, host_env(tmp_path, "git", "tar", "gzip"), tmp_path)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    stem = index_of(pybundle)["interpreter"][len("python/"):-len(".tar.gz")]
    assert f"no Python {HERE} on this machine: unpacking the bundle's {stem}" in got.stderr
    assert base_of(home / "venv") == str(home / "python" / stem / "bin")
    patched = subprocess.run([str(home / "venv" / "bin" / "python"), "-c",
                              "import tinypkg.core as c; print(c.scaler_for('tpu'))"], capture_output=True, text=True)
    assert patched.stdout.strip() == "torch_tpu.GradScaler", patched.stderr


@pytest.mark.network
def test_install_bundle_made_without_python_says_so(tmp_path, capsys):
    project, _ = make_project(tmp_path)
    out = tmp_path / "bundle"
    assert main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home),
                 "--no-python"]) == 0
    assert index_of(out)["interpreter"] is None and not (out / "python").exists()
    got = subprocess.run([SD_ENV, "install", "--bundle", str(out), "--home", str(tmp_path / "home")],
                         env=host_env(tmp_path, "git"), capture_output=True, text=True, timeout=600)
    assert got.returncode == 2, got.stderr
    assert f"no Python {HERE} on this machine, and the bundle {out} carries none" in got.stderr
    assert "re-create the bundle with this sd-env" in got.stderr


@pytest.mark.network
def test_the_bundles_bootstrap_on_a_host_with_no_python_at_all(pybundle, tmp_path):
    """Only bash, coreutils, sed, grep, gzip, tar and git on the PATH, no network: sd-env's own venv
    and the target both come from the bundle's Python, unpacked once."""
    env = {**host_env(tmp_path, *HOST_TOOLS), "SD_ENV_HOME": str(tmp_path / "home")}
    assert shutil.which("python3", path=env["PATH"]) is None and shutil.which("curl", path=env["PATH"]) is None
    got = run_offline([shutil.which("bash") or "/bin/bash", str(pybundle / "bootstrap.sh"), "--expect",
                       bundle_id(pybundle), "--no-verify"], env, tmp_path)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    home = tmp_path / "home"
    stem = index_of(pybundle)["interpreter"][len("python/"):-len(".tar.gz")]
    assert got.stderr.count("unpacking the bundle's") == 1, got.stderr
    assert base_of(home / "tool") == base_of(home / "venv") == str(home / "python" / stem / "bin")
    # a second run finds it under the home: nothing is unpacked again
    again = run_offline([shutil.which("bash") or "/bin/bash", str(pybundle / "bootstrap.sh"), "--expect",
                         bundle_id(pybundle), "--no-verify"], env, tmp_path)
    assert again.returncode == 0 and "unpacking" not in again.stderr, again.stderr[-3000:]


def shell(script: str, *args: str) -> subprocess.CompletedProcess:
    lib = f". {ROOT / 'scripts' / 'bundle-tool.sh'}\nsay() {{ printf '* %s\\n' \"$*\" >&2; }}\n"
    return subprocess.run(["bash", "-c", lib + script, "bash", *args], capture_output=True, text=True, timeout=300)


def test_the_shell_unpacks_only_the_listed_archive_at_its_hash(made, tmp_path):
    """bundle-tool.sh's bundle_interpreter, on a bundle folder holding just the index and the archive."""
    index = index_of(made.out)
    rel = index["interpreter"]
    fake = tmp_path / "bundle"
    (fake / "python").mkdir(parents=True)
    shutil.copyfile(made.out / "index.json", fake / "index.json")
    shutil.copyfile(made.out / rel, fake / rel)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    call = 'bundle_interpreter "$1" "$1/index.json" "$2" "$3" "$4"'
    good = shell(call, str(fake), str(tmp_path / "home"), str(scratch), HERE)
    assert good.returncode == 0, good.stderr
    python = Path(good.stdout.strip())
    assert subprocess.run([str(python), "-c", "import ssl, venv"], capture_output=True).returncode == 0
    # a flipped byte: refused, nothing unpacked
    data = bytearray((fake / rel).read_bytes())
    data[len(data) // 2] ^= 1
    (fake / rel).write_bytes(bytes(data))
    bad = shell(call, str(fake), str(tmp_path / "home2"), str(scratch), HERE)
    assert bad.returncode != 0 and "does not match the index" in bad.stderr
    assert not (tmp_path / "home2" / "python").exists()
    # an index naming something that is not a Python archive of this version: not even read
    doc = json.loads((fake / "index.json").read_text())
    doc["interpreter"] = rel.replace(f"cpython-{HERE}.", "cpython-3.8.")
    (fake / "index.json").write_text(json.dumps(doc, indent=1))
    other = shell(call, str(fake), str(tmp_path / "home3"), str(scratch), HERE)
    assert other.returncode != 0 and f"is not a Python {HERE} archive" in other.stderr


def test_a_linked_python_folder_is_refused_by_the_shell(made, tmp_path):
    fake = tmp_path / "bundle"
    fake.mkdir()
    shutil.copyfile(made.out / "index.json", fake / "index.json")
    (fake / "python").symlink_to(made.out / "python")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    got = shell('bundle_interpreter "$1" "$1/index.json" "$2" "$3" "$4"', str(fake), str(tmp_path / "home"),
                str(scratch), HERE)
    assert got.returncode != 0 and "missing or a symbolic link" in got.stderr
