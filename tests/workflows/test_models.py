"""`sd-env model lock` and `model fetch` against a Hub of our own (tests/kit/hubkit.py) on 127.0.0.1, through the
default stack's huggingface_hub 0.16.4 in a small target venv: lock then fetch, a re-run that fetches nothing,
a fetch killed mid-file that resumes with a Range request, a tampered file refused and named with nothing of it
left in place, an unknown revision, a private repository reached with HF_TOKEN, and the choice of files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core import hublock
from sd_env.core.hubcache import Snapshot, hub_cache
from sd_env.core.manifest import load
from sd_env.errors import InputError
from sd_env.workflows import models
from tests.conftest import run_in
from tests.kit.hubkit import SELECTED, FakeHub, folder_files, synthetic_model

pytestmark = pytest.mark.network  # the target venv's huggingface_hub comes from the package index
REPO = "sd-env-test/tiny-sd"
UNET = "unet/diffusion_pytorch_model.safetensors"


@dataclass
class Hubbed:
    hub: FakeHub
    root: Path
    python: Path
    commit: str

    @property
    def manifest(self) -> Path:
        return self.root / "manifests" / "hub.toml"

    def write(self, model: str | None = REPO, revision: str | None = None, dataset: tuple[str, str] | None = None,
              extra: str = "") -> Path:
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        text = (f'schema = 1\nname = "hub"\npython = "{here}"\ndevice = "tpu:0"\n[torch]\n'
                'requirements = ["torch==2.1.0"]\nindex = "https://pypi.org/simple"\n')
        if model:
            text += f'[model]\nrepo = "{model}"\nrevision = "{revision or self.commit}"\n{extra}'
        if dataset:
            text += f'[dataset]\nrepo = "{dataset[0]}"\nrevision = "{dataset[1]}"\n'
        text += '[[component]]\nname = "x"\ngit = "https://example.org/x.git"\ntag = "v1"\nversion = "1.0"\n'
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        self.manifest.write_text(text)
        return self.manifest

    def cli(self, *args: str) -> int:
        return main([*args, "-m", str(self.manifest), "--home", str(self.root / "home"), "--python", str(self.python)])

    def snapshot(self) -> Snapshot:
        return Snapshot(hub_cache(), hublock.read(load(self.manifest).model_lock).model)  # type: ignore[arg-type]


@pytest.fixture
def hubbed(tmp_path, hub_python, monkeypatch) -> Hubbed:
    hub = FakeHub().start()
    commit = hub.add("model", REPO, synthetic_model())
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    made = Hubbed(hub, tmp_path, hub_python, commit)
    made.write()
    yield made
    hub.stop()


def test_lock_then_fetch_then_a_rerun_fetches_nothing(hubbed, capfd):
    served = hubbed.hub.repos[("model", REPO)].files
    assert hubbed.cli("model", "lock") == 0
    lock = hublock.read(load(hubbed.manifest).model_lock)
    assert lock.model is not None and lock.model.revision == hubbed.commit
    assert [f.path for f in lock.model.files] == SELECTED  # fp32 safetensors only: no .bin, fp16, non_ema, Flax
    for f in lock.model.files:
        assert f.sha256 == hashlib.sha256(served[f.path]).hexdigest() and f.size == len(served[f.path])
        assert f.lfs == f.path.endswith(".safetensors")
    assert "left out 10 files" in lock.model.note and "e.g. text_encoder/model.bin" in lock.model.note
    listed = [r for r in hubbed.hub.requests if r.path.startswith("/api/")]
    assert [r.path for r in listed] == [f"/api/models/{REPO}/revision/{hubbed.commit}?blobs=True"]
    assert hubbed.hub.count("GET", "/cdn/") == 0  # the lock downloads no weights: the listing has their sha256

    hubbed.hub.requests.clear()
    assert hubbed.cli("model", "fetch") == 0
    assert "fetched 12 files" in capfd.readouterr().out
    snap = hubbed.snapshot()
    assert snap.missing() == {}
    blob = f"../../../blobs/{hashlib.sha256(served[UNET]).hexdigest()}"
    assert (snap.folder / UNET).is_symlink() and os.readlink(snap.folder / UNET) == blob  # huggingface_hub's layout
    assert not list(snap.storage.rglob("*.incomplete")) and not list(snap.storage.rglob("*.lock"))
    # 11 blobs for 12 files: the tokenizer's two "{}" files are one blob, fetched once.
    assert hubbed.hub.count("HEAD", "/resolve/") == 11 and hubbed.hub.count("GET", "/cdn/") == 3
    # The target's huggingface_hub finds it offline at the pinned revision, as from_pretrained will.
    found = run_in(hubbed.python, f"import huggingface_hub as h; print(h.snapshot_download({REPO!r}, revision="
                   f"{hubbed.commit!r}, local_files_only=True)); print(h.try_to_load_from_cache({REPO!r}, {UNET!r}, "
                   f"revision={hubbed.commit!r}))")
    assert found.splitlines() == [str(snap.folder), str(snap.folder / UNET)]

    hubbed.hub.requests.clear()
    assert hubbed.cli("model", "fetch") == 0
    assert "in place, sha256 checked; nothing fetched" in capfd.readouterr().out
    assert hubbed.hub.requests == []  # not even a HEAD


def test_a_fetch_killed_mid_file_resumes_where_it_stopped(hubbed):
    big = synthetic_model()
    # huggingface_hub's http_get writes what it reads in blocks of 10 MB: a kill keeps whole blocks only.
    big[UNET] = os.urandom(24 << 20)
    hubbed.commit = hubbed.hub.add("model", REPO, big)
    hubbed.write()
    assert hubbed.cli("model", "lock") == 0
    hubbed.hub.rate = 4 << 20  # 4 MB/s: six seconds for the UNet
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "installer")}
    first = subprocess.Popen([sys.executable, "-m", "sd_env", "model", "fetch", "-m", str(hubbed.manifest), "--home",
                              str(hubbed.root / "home"), "--python", str(hubbed.python)], env=env,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = next(f for f in hubbed.snapshot().repo.files if f.path == UNET)
    incomplete = hubbed.snapshot().incomplete(partial)
    deadline = time.monotonic() + 60
    while not (incomplete.is_file() and incomplete.stat().st_size >= (10 << 20)):
        assert time.monotonic() < deadline and first.poll() is None, "the fetch never got going"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # sd-env and its probe, mid-file
    first.wait()
    kept = incomplete.stat().st_size
    assert 0 < kept < len(big[UNET]) and not (hubbed.snapshot().folder / UNET).exists()

    hubbed.hub.rate = None
    hubbed.hub.requests.clear()
    assert hubbed.cli("model", "fetch") == 0
    assert hubbed.snapshot().missing() == {}
    assert hubbed.hub.ranges() == [f"bytes={kept}-"]  # the UNet resumed; everything else had been placed


def test_a_tampered_file_is_refused_named_and_never_placed(hubbed, capfd):
    assert hubbed.cli("model", "lock") == 0
    hubbed.hub.tamper(hubbed.hub.repos[("model", REPO)].files[UNET])
    assert hubbed.cli("model", "fetch") == 1
    err = capfd.readouterr().err
    assert f"refused {UNET} as served: sha256 " in err and "nothing of it is in the cache" in err
    snap = hubbed.snapshot()
    unet = next(f for f in snap.repo.files if f.path == UNET)
    assert not snap.pointer(unet).exists() and not snap.blob(unet).exists() and not snap.incomplete(unet).exists()
    assert list(snap.missing()) == [UNET]  # the others are in place, checked
    with pytest.raises(InputError, match=f"not in place .*{UNET}: missing"):
        models.pinned(load(hubbed.manifest), "model")  # train never reads an incomplete snapshot
    hubbed.hub.tampered.clear()
    assert hubbed.cli("model", "fetch") == 0 and snap.missing() == {}


def test_a_revision_the_server_lacks_is_a_clear_error(hubbed, capfd):
    hubbed.write(revision="1" * 40)
    assert hubbed.cli("model", "lock") == 1
    err = capfd.readouterr().err
    assert f"has no revision {'1' * 40} of the model {REPO}" in err and "pin a commit the repository has" in err
    assert not load(hubbed.manifest).model_lock.exists()
    # A lock made when the server had it, fetched from a server (a mirror) that no longer does.
    hubbed.write()
    assert hubbed.cli("model", "lock") == 0
    hubbed.hub.repos[("model", REPO)].commit = "2" * 40
    assert hubbed.cli("model", "fetch") == 1
    assert f"has no revision {hubbed.commit}" in capfd.readouterr().err


def test_the_lock_must_be_the_manifests_and_a_private_repo_needs_hf_token(hubbed, monkeypatch, capfd):
    assert hubbed.cli("model", "lock") == 0
    hubbed.write(extra='weights = "bin"\n')
    assert hubbed.cli("model", "fetch") == 2
    assert "the manifest pins" in capfd.readouterr().err  # a lock made for another pin is not used
    hubbed.hub.repos[("model", REPO)].private = True
    hubbed.write()
    assert hubbed.cli("model", "lock") == 1
    assert "export HF_TOKEN" in capfd.readouterr().err
    # huggingface_hub 0.16 reads HUGGING_FACE_HUB_TOKEN: sd-env hands it HF_TOKEN.
    monkeypatch.setenv("HF_TOKEN", hubbed.hub.token)
    hubbed.hub.requests.clear()
    assert hubbed.cli("model", "lock") == 0 and hubbed.cli("model", "fetch") == 0
    assert {r.authorization for r in hubbed.hub.requests if "/cdn/" not in r.path} == {f"Bearer {hubbed.hub.token}"}
    assert all(r.authorization is None for r in hubbed.hub.requests if "/cdn/" in r.path)  # no token to the CDN


def test_a_dataset_repository_is_locked_whole_and_fetched_on_its_own(hubbed, tmp_path):
    data = {"metadata.jsonl": b'{"file_name": "a.png", "text": "a red square"}\n', "a.png": b"\x89PNG-ish",
            ".gitattributes": b"*.png filter=lfs\n", "README.md": b"# data\n"}
    commit = hubbed.hub.add("dataset", "sd-env-test/shapes", data)
    hubbed.write(model=REPO, dataset=("sd-env-test/shapes", commit))
    assert hubbed.cli("model", "lock") == 0
    lock = hublock.read(load(hubbed.manifest).model_lock)
    assert lock.dataset is not None and [f.path for f in lock.dataset.files] == ["README.md", "a.png", "metadata.jsonl"]
    hubbed.hub.requests.clear()
    assert hubbed.cli("model", "fetch", "--only", "dataset") == 0
    assert all(r.path.startswith(("/datasets/", "/cdn/")) for r in hubbed.hub.requests)
    folder, _repo = models.pinned(load(hubbed.manifest), "dataset")
    assert folder == hub_cache() / "datasets--sd-env-test--shapes" / "snapshots" / commit
    assert folder_files(folder) == {p: d for p, d in data.items() if p != ".gitattributes"}


# -- the choice of files and the lock file, pure ---------------------------------------------------------
def listing(files: dict[str, bytes]) -> list[hublock.Listed]:
    return [hublock.Listed(p, len(d), hashlib.sha256(d).hexdigest(), hashlib.sha256(d).hexdigest(), True)
            for p, d in files.items()]


def test_one_weight_format_on_purpose():
    files = synthetic_model()
    index = json.loads(files["model_index.json"])
    chosen, _note = hublock.select_model(listing(files), index, "bin")
    assert [f.path for f in chosen if hublock.is_weight(f.path)] == [
        "text_encoder/model.bin", "unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin"]
    del files["vae/diffusion_pytorch_model.safetensors"]
    with pytest.raises(InputError, match=r"vae/ has no plain \.safetensors weights .*\.bin, \.safetensors") as info:
        hublock.select_model(listing(files), index, "safetensors")
    assert 'weights = "bin"' in info.value.hint
    sharded = {**synthetic_model(), "unet/diffusion_pytorch_model.safetensors.index.json": b"{}",
               "unet/diffusion_pytorch_model.bin.index.json": b"{}", "unet/x.fp16.safetensors.index.json": b"{}"}
    chosen, _note = hublock.select_model(listing(sharded), index, "safetensors")
    assert [f.path for f in chosen if f.path.endswith(".index.json")] == [
        "unet/diffusion_pytorch_model.safetensors.index.json"]


def test_a_lock_with_a_path_outside_the_repository_is_refused(tmp_path):
    weights = hublock.LockedFile("unet/w.safetensors", 1, "b" * 64, "b" * 64, True)
    good = hublock.HubLock(tmp_path / "x.model.lock.json",
                           hublock.LockedRepo("model", REPO, "a" * 40, "safetensors", (weights,)))
    good.path.write_text(good.dump())
    assert hublock.read(good.path).model == good.model
    good.path.write_text(good.dump().replace("unet/w.safetensors", "../../w.safetensors"))
    with pytest.raises(InputError, match=r"'../../w.safetensors' is refused: not normalised"):
        hublock.read(good.path)
