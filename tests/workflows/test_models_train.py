"""The tiny SD model (probes/tiny_sd.py) served by our own Hub, pinned, fetched and trained on for real: the
pipeline loads offline from the Hub cache by (repo, revision); `sd-env train` takes the pinned model by default
and writes a run record; two runs on the same inputs are identical but for times; one changed caption is named.
Then the whole default stack in a bundle with the model and the dataset, installed and trained inside
`unshare -n`. Slow: they need the real torch 2.1 environment (SD_ENV_TEST_TARGET reuses one while developing)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_env.system import probe
from sd_env.verify.readiness import EXAMPLE
from tests.kit.bundlekit import SD_ENV, needs_unshare, offline, outside_connects
from tests.kit.hubkit import OTHER_FORMATS, FakeHub, folder_files, stack_project

pytestmark = [pytest.mark.slow]
REPO, DATA = "sd-env-test/tiny-sd", "sd-env-test/shapes"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Tiny:
    hub: FakeHub
    commit: str
    data_commit: str
    data: Path  # the 4 captioned images, as a local folder too


@pytest.fixture(scope="session")
def train_target(request, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the target's python, the patched v0.20.0 training script, a home for train's logs): the bootstrapped
    home (its git checkout of diffusers has examples/), or SD_ENV_TEST_TARGET's (read only: a home of our own)."""
    existing = os.environ.get("SD_ENV_TEST_TARGET")
    if existing:
        home = tmp_path_factory.mktemp("train-home")
        return Path(existing) / "venv" / "bin" / "python", Path(existing) / "src" / "diffusers" / EXAMPLE, home
    home = request.getfixturevalue("mirrored")
    return home / "venv" / "bin" / "python", home / "src" / "diffusers" / EXAMPLE, home


@pytest.fixture(scope="module")
def tiny(train_target, tmp_path_factory):
    python = train_target[0]
    where = tmp_path_factory.mktemp("tiny-repo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for argv in ([str(probe.script("tiny_sd.py")), "--out", str(where / "tiny")],
                 ["-c", OTHER_FORMATS, str(where / "tiny" / "model")]):
        got = subprocess.run([str(python), *argv], capture_output=True, text=True, env=env)
        assert got.returncode == 0, got.stderr[-2000:]
    hub = FakeHub().start()
    files = {**folder_files(where / "tiny" / "model"), "README.md": b"# tiny\n", ".gitattributes": b"*.bin lfs\n"}
    commit = hub.add("model", REPO, files)
    data_commit = hub.add("dataset", DATA, folder_files(where / "tiny" / "data"))
    yield Tiny(hub, commit, data_commit, where / "tiny" / "data")
    hub.stop()


def sd_env(*argv: str, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sd_env", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_pinned_tiny_model_loads_offline_trains_and_records_the_run(tiny, train_target, tmp_path):
    python, script, home = train_target
    manifest = stack_project(tmp_path / "project", REPO, tiny.commit)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SD_ENV_HOME", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=tiny.hub.url, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    where = ["-m", str(manifest), "--home", str(home), "--python", str(python)]
    for action in ("lock", "fetch"):
        got = sd_env("model", action, *where, env=env)
        assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    lock = json.loads(manifest.with_name("sc7-sd14-lora.model.lock.json").read_text())["model"]
    assert len(lock["files"]) == 12 and "left out 9 files (7 weight files" in lock["note"]

    # The tutorial's inference code, offline: from_pretrained(repo, revision) finds the snapshot in the cache.
    load = (f"from diffusers import StableDiffusionPipeline as P; p = P.from_pretrained({REPO!r}, revision="
            f"{tiny.commit!r}); print(type(p.unet).__name__, p.unet.config.sample_size)")
    got = subprocess.run([str(python), "-c", load], capture_output=True, text=True,
                         env={**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert got.returncode == 0 and got.stdout.split() == ["UNet2DConditionModel", "16"], got.stderr[-3000:]

    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # training asks no Hub: nothing answers there
    records = []
    for n, data in enumerate([tiny.data, tiny.data, changed_caption(tiny.data, tmp_path / "changed")]):
        out = tmp_path / f"lora{n}"
        got = sd_env("train", *where, "--script", str(script), "--data", str(data), "--output", str(out),
                     "--resolution", "32", "--max-train-steps", "2", "--validation-images", "0", "--no-pictures",
                     env=env)
        assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-4000:]
        assert f"run record: {out / 'sd-env-run.json'}" in got.stdout
        records.append(out / "sd-env-run.json")
    first = json.loads(records[0].read_text())
    print(json.dumps(first, indent=1)[:6000])  # the record of one run, for the report
    assert first["model"]["source"] == "pinned" and first["model"]["revision"] == tiny.commit
    assert first["model"]["file_sha256"] == {f["path"]: f["sha256"] for f in lock["files"]}
    assert (first["data"]["source"], first["data"]["files"], first["data"]["kind"]) == ("folder", 5, "imagefolder")
    assert first["seed"] == "42" and first["device"]["asked"] == "cpu" and first["device"]["torch_tpu"] is None
    assert first["device"]["measured"] == {"loss": ["cpu"], "trained": ["cpu"]}
    assert first["precision"]["requested"] == "no" and "UNet forward: frozen layers ran in fp32" in \
        first["precision"]["measured"]
    assert math.isfinite(first["final_loss"]) and first["losses"] == 2
    assert "--pretrained_model_name_or_path" in first["arguments"] and "<model>" in first["arguments"]

    same = sd_env("run-diff", str(records[0]), str(records[1].parent), env=env)
    print(same.stdout)
    assert same.returncode == 0 and same.stdout.startswith("identical but for times (finished, ")  # seconds may match
    assert same.stdout.rstrip().endswith("and argv, output, run_id: same inputs, same outcome")
    other = sd_env("run-diff", str(records[0]), str(records[2]), "--json", env=env)
    diff = json.loads(other.stdout)
    print(json.dumps(diff, indent=1))
    assert other.returncode == 1 and [line.split(":")[0] for line in diff["inputs"]] == [
        "data.bytes", "data.file_sha256[metadata.jsonl]", "data.sha256"]


def changed_caption(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest)
    meta = dest / "metadata.jsonl"
    meta.write_text(meta.read_text().replace('"a red square"', '"a red squares"', 1))
    return dest


@pytest.mark.network
@needs_unshare
def test_a_bundle_with_the_model_and_data_installs_and_trains_with_no_network(tiny, train_target, bootstrapped,
                                                                              tmp_path):
    home, _ = bootstrapped
    # The pinned transformers sdist, fetched with pip's build isolation: bundle create's own download runs
    # `pip download --no-build-isolation`, which needs `wheel` in the tests' venv (setuptools 58 has no
    # bdist_wheel), and the suite's venv has none.
    sdists = tmp_path / "sdists"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
                          str(sdists), "transformers==4.29.1"], capture_output=True, text=True)
    assert got.returncode == 0, got.stderr[-2000:]
    manifest = stack_project(tmp_path / "project", REPO, tiny.commit, (DATA, tiny.data_commit))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SD_ENV_HOME", "HF_HUB_OFFLINE")}
    env.update(HF_ENDPOINT=tiny.hub.url, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    where = ["-m", str(manifest), "--home", str(tmp_path / "maker"), "--python", str(home / "venv" / "bin" / "python")]
    for action in ("lock", "fetch"):
        got = sd_env("model", action, *where, env=env)
        assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    out = tmp_path / "bundle"
    got = sd_env("bundle", "create", str(out), *where[:4], "--from-home", str(home), "--reuse", str(sdists),
                 "--with-model", "--with-data", env=env)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-3000:]

    # The air-gapped machine: another Hub cache, no network at all, the bundle's own manifest.
    env = {k: v for k, v in env.items() if k not in ("HF_ENDPOINT",)}
    env["HF_HOME"] = str(tmp_path / "hf-offline")
    new = tmp_path / "offline-home"
    got = offline([SD_ENV, "install", "--bundle", str(out), "--home", str(new), "--json"], tmp_path / "c1", env=env)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    steps = {(r["component"], r["step"]): r["detail"] for r in json.loads(got.stdout)["results"]}
    assert "placed 12 of 12 files" in steps[("model", "place")] and "placed 5 of 5" in steps[("dataset", "place")]
    lora = tmp_path / "lora"
    got = offline([SD_ENV, "train", "-m", str(out / "manifests" / "sc7-sd14-lora.toml"), "--home", str(new),
                   "--output", str(lora), "--resolution", "32", "--max-train-steps", "2", "--validation-images", "0",
                   "--no-pictures"], tmp_path / "c2", env=env)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-4000:]
    assert outside_connects(tmp_path / "c1") == [] and outside_connects(tmp_path / "c2") == []
    record = json.loads((lora / "sd-env-run.json").read_text())
    assert record["model"]["source"] == record["data"]["source"] == "pinned"
    assert (record["model"]["revision"], record["data"]["revision"]) == (tiny.commit, tiny.data_commit)
    assert record["components"]["diffusers"]["commit"] == "e3380c02cf177a8027efea5d233afa9abb1870da"
