"""A bundle that carries the model: `bundle create --with-model` packs the locked files fetched from our own
Hub (tests/kit/hubkit.py), `bundle verify` holds them to the model lock (not to the index's word), and
`install --bundle` puts them in the Hub cache with no network, where `model fetch` then finds nothing to do.
The small project of tests/kit/bundlekit.py; its bundle is made once per module."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core import hublock
from sd_env.core.hubcache import Snapshot
from sd_env.core.manifest import load
from tests.kit.bundlekit import SD_ENV, make_project, needs_unshare, offline, outside_connects
from tests.kit.hubkit import SELECTED, FakeHub, synthetic_model

pytestmark = pytest.mark.network
REPO = "sd-env-test/tiny-sd"
UNET = "model/unet/diffusion_pytorch_model.safetensors"


@dataclass
class ModelBundle:
    out: Path
    manifest: Path
    lock: hublock.HubLock


@pytest.fixture(scope="module")
def model_bundle(tmp_path_factory, hub_python) -> ModelBundle:
    root = tmp_path_factory.mktemp("model-bundle")
    project, _commit = make_project(root)
    hub = FakeHub().start()
    commit = hub.add("model", REPO, synthetic_model())
    with project.manifest.open("a") as f:
        f.write(f'\n[model]\nrepo = "{REPO}"\nrevision = "{commit}"\n')
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(root / "hf")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        home = ["-m", str(project.manifest), "--home", str(project.home), "--python", str(hub_python)]
        assert main(["model", "lock", *home]) == 0 and main(["model", "fetch", *home]) == 0
        out = root / "out"
        assert main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home),
                     "--with-model"]) == 0
    finally:
        hub.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return ModelBundle(out, project.manifest, hublock.read(load(project.manifest).model_lock))


def members(out: Path) -> dict[str, dict]:
    return {m["path"]: m for m in json.loads((out / "index.json").read_text())["members"]}


def test_the_bundle_carries_exactly_the_locked_files_and_the_lock(model_bundle, capsys):
    listed = members(model_bundle.out)
    assert sorted(p[len("model/"):] for p, m in listed.items() if m["kind"] == "model") == SELECTED
    assert listed["manifests/test.model.lock.json"]["kind"] == "model-lock"
    assert model_bundle.lock.model is not None
    for f in model_bundle.lock.model.files:
        assert listed[f"model/{f.path}"]["sha256"] == f.sha256
    assert main(["bundle", "verify", str(model_bundle.out), "-m", str(model_bundle.manifest)]) == 0
    assert "model 12" in capsys.readouterr().out


def rewrite(out: Path, path: str, data: bytes | None) -> None:
    """Change (or, with None, remove) a member and its index line together: the index agrees, only the lock
    can tell."""
    index = json.loads((out / "index.json").read_text())
    if data is None:
        (out / path).unlink()
        index["members"] = [m for m in index["members"] if m["path"] != path]
    else:
        (out / path).write_bytes(data)
        for m in index["members"]:
            if m["path"] == path:
                m.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")


@pytest.mark.parametrize("case,message", [
    ("swapped weights", f"bundle member {UNET} is not a file the model lock pins (sha256 "),
    ("a file left out", f"the bundle lacks 1 locked model files: {UNET}"),
    ("an edited lock", "the bundle's manifests/test.model.lock.json is not the checkout's"),
])
def test_the_model_lock_decides_not_the_index(model_bundle, tmp_path, capsys, case, message):
    copy = tmp_path / "copy"
    shutil.copytree(model_bundle.out, copy)
    if case == "swapped weights":
        rewrite(copy, UNET, os.urandom(1000))
    elif case == "a file left out":
        rewrite(copy, UNET, None)
    else:
        lock = copy / "manifests" / "test.model.lock.json"
        rewrite(copy, "manifests/test.model.lock.json", lock.read_bytes().replace(b'"size": 200000', b'"size": 1000'))
    assert main(["bundle", "verify", str(copy), "-m", str(model_bundle.manifest)]) == 1
    assert message in capsys.readouterr().err


def install(model_bundle: ModelBundle, tmp_path: Path, fresh_target: Path, name: str) -> tuple[dict, Path]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SD_ENV_HOME", "SD_ENV_MANIFEST")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")  # nothing answers there
    argv = [SD_ENV, "install", "--bundle", str(model_bundle.out), "--home", str(tmp_path / "home"), "--python",
            str(fresh_target), "--json"]
    got = offline(argv, tmp_path / name, env=env)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert outside_connects(tmp_path / name) == []
    return {(r["component"], r["step"]): r for r in json.loads(got.stdout)["results"]}, tmp_path / "hf" / "hub"


@needs_unshare
def test_install_puts_the_model_in_place_with_no_network(model_bundle, tmp_path, fresh_target):
    steps, cache = install(model_bundle, tmp_path, fresh_target, "connects")
    placed = steps[("model", "place")]
    assert placed["status"] == "ok" and "placed 12 of 12 files" in placed["detail"] and "no network" in placed["detail"]
    assert model_bundle.lock.model is not None
    snap = Snapshot(cache, model_bundle.lock.model)
    assert snap.missing() == {} and (snap.folder / "unet" / "diffusion_pytorch_model.safetensors").is_symlink()
    steps, _ = install(model_bundle, tmp_path, fresh_target, "connects-again")
    assert "all 12 files already there" in steps[("model", "place")]["detail"]
    manifest = model_bundle.out / "manifests" / "test.toml"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    got = offline([SD_ENV, "model", "fetch", "-m", str(manifest), "--home", str(tmp_path / "home")],
                  tmp_path / "connects-fetch", env=env)
    assert got.returncode == 0 and "nothing fetched" in got.stdout, got.stderr[-2000:]
    assert outside_connects(tmp_path / "connects-fetch") == []


def test_the_ansible_role_sends_the_model_members_too(model_bundle):
    """The role's control-machine check (files/bundle-index.py) passes the new member kinds and lists them."""
    script = Path(__file__).resolve().parents[2] / "deploy/ansible/roles/sd_env/files/bundle-index.py"
    bundle_id = hashlib.sha256((model_bundle.out / "index.json").read_bytes()).hexdigest()
    got = subprocess.run([sys.executable, str(script), str(model_bundle.out), bundle_id, ""], capture_output=True,
                         text=True)
    assert got.returncode == 0, got.stderr
    files = json.loads(got.stdout)["files"]
    assert {UNET, "manifests/test.model.lock.json"} <= set(files)
    assert len([f for f in files if f.startswith("model/")]) == 12
