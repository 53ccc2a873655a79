"""sd-env train: choosing the dataset flag, overriding the tutorial's arguments, finding the
script (and getting it when diffusers came from its sdist), and a real training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sd_env.core import state
from sd_env.errors import InputError
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.workflows import train
from tests.conftest import ROOT, TPU_PATCH, git, run_in, tiny_component
from tests.workflows.test_install import SCALER, checkout, make_sdist


def test_dataset_kind_picks_the_flag_the_script_can_load(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "sub" / "a.png").write_bytes(b"png")
    with pytest.raises(InputError, match=r"no metadata\.jsonl") as info:
        train.dataset_kind(images)
    assert '"file_name": "sub/a.png"' in info.value.hint
    (images / "metadata.jsonl").write_text('{"file_name": "sub/a.png", "text": "a"}\n')
    assert train.dataset_kind(images) == "imagefolder"
    saved = tmp_path / "saved"
    (saved / "train").mkdir(parents=True)
    (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    assert train.dataset_kind(saved) == "saved"
    repo = tmp_path / "snapshot"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    assert train.dataset_kind(repo) == "repo"
    with pytest.raises(InputError, match="not a folder"):
        train.dataset_kind(tmp_path / "missing")


def test_arguments_after_the_separator_replace_the_tutorials():
    argv = train.merged_args(train.TUTORIAL, ["--resolution=64", "--max-train-steps", "5", "--num_train_epochs", "1"])
    assert argv.count("--resolution=64") == 1 and "512" not in argv
    assert argv[-4:] == ["--max_train_steps", "5", "--num_train_epochs", "1"]
    assert "10" not in argv  # the tutorial's 10 epochs are gone, not given twice
    assert argv[:2] == ["--mixed_precision", "no"] and "--random_flip" in argv
    assert argv[argv.index("--validation_prompt") + 1] == "cute dragon creature"


def test_sdist_diffusers_says_how_to_get_the_script(tmp_path):
    paths = Paths(tmp_path / "home")
    record = state.State({"diffusers": state.ComponentState("sdist", "v0.20.0", "0" * 40, version="0.20.0")})
    state.save(record, paths.state)
    (paths.checkout("diffusers") / "src").mkdir(parents=True)
    with pytest.raises(InputError, match="came from its PyPI sdist") as info:
        train.find_script(paths, None)
    assert "sd-env install --git-mirror PREFIX" in info.value.hint and "--script PATH" in info.value.hint


def test_install_with_a_git_mirror_replaces_an_sdist_checkout(project, upstream, fresh_target, tmp_path,
                                                             monkeypatch, capsys):
    """The hint above, followed: the sdist checkout becomes the git tag, patches and all."""
    make_sdist(upstream, tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    project.add_patch("tiny-tpu.diff", upstream.diff(TPU_PATCH))
    project.add_patch("example.diff", upstream.diff({"examples/train.py": "import torch_tpu\n"}))
    comp = tiny_component(upstream, git(upstream.repo, "rev-parse", "HEAD"), ["tiny-tpu.diff", "example.diff"])
    comp["git"] = "https://github.com/sd-env-test/tinypkg.git"  # only ever reached through a mirror here
    project.write_manifest([comp])
    assert project.cli("install", "--git-mirror", str(tmp_path / "gone"), python=fresh_target) == 0
    assert state.load(project.home / "state.json").components["tinypkg"].source == "sdist"
    assert not (checkout(project) / "examples").exists()

    mirror = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--bare", str(upstream.repo), str(mirror / "sd-env-test" / "tinypkg.git")],
                   check=True)
    (checkout(project) / "src" / "tinypkg" / "__init__.py").write_text("# an edit\n")
    assert project.cli("install", "--git-mirror", str(mirror), python=fresh_target) == 1
    assert "has local edits in src/tinypkg/__init__.py" in capsys.readouterr().err
    git(checkout(project), "checkout", "--", "src/tinypkg/__init__.py")

    capsys.readouterr()
    assert project.cli("install", "--json", "--git-mirror", str(mirror), python=fresh_target) == 0
    details = [r["detail"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert any(d.startswith("replaced the sdist checkout by git v1.0") for d in details), details
    rec = state.load(project.home / "state.json").components["tinypkg"]
    assert rec.source == "git" and [p.name for p in rec.patches] == ["tiny-tpu.diff", "example.diff"]
    assert (checkout(project) / "examples" / "train.py").read_text() == "import torch_tpu\n"
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"  # the editable install still points here
    capsys.readouterr()
    assert project.cli("install", "--json", "--git-mirror", str(mirror), python=fresh_target) == 0
    assert "up to date" in capsys.readouterr().out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def readme_inference(model: Path, output: Path) -> str:
    """The README's inference block, on the tiny model (2 steps instead of 30)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- inference -->", 1)[1].split("<!-- /inference -->", 1)[0]
    code = block.strip().removeprefix("```bash").removesuffix("```")
    assert "MODEL_NAME=PATH/CompVis_SD14_pretrained_weights OUTPUT_DIR=sd-lora" in code
    code = code.replace("PATH/CompVis_SD14_pretrained_weights", str(model)).replace("=sd-lora", f"={output}")
    return code.replace("num_inference_steps=30", "num_inference_steps=2")


@pytest.mark.slow
@pytest.mark.network
def test_train_writes_the_lora_and_pictures_then_the_readme_line_uses_it(mirrored, tmp_path):
    python = mirrored / "venv" / "bin" / "python"
    tiny = tmp_path / "tiny"
    built = subprocess.run([str(python), str(probe.script("tiny_sd.py")), "--out", str(tiny)], capture_output=True,
                           text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert built.returncode == 0, built.stderr[-2000:]
    # One thread: the tiny model runs 10x faster than on two contending ones (see verify.ONE_THREAD).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SD_ENV_HOME": str(mirrored),
           "OMP_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    out = tmp_path / "lora"
    # The tiny model's VAE downsamples 2x, not 8x: at the tutorial's 512 its attention is killed for memory.
    got = subprocess.run([sys.executable, "-m", "sd_env", "train", "--model", str(tiny / "model"),
                          "--data", str(tiny / "data"), "--output", str(out), "--resolution", "32",
                          "--max-train-steps", "2", "--inference-steps", "2", "--validation-images", "0"],
                         capture_output=True, text=True, env=env, timeout=3600)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-4000:]
    assert "Running validation" not in got.stderr and "--validation_prompt" not in got.stderr  # skipped
    assert f"--train_data_dir {tiny / 'data'}" in got.stderr  # an image folder, not --dataset_name
    assert "--num_train_epochs 10 --checkpointing_steps 500" in got.stderr and "--resolution 32" in got.stderr
    assert "ACCELERATE_TORCH_DEVICE=cpu" in got.stderr
    weights = out / "pytorch_lora_weights.safetensors"
    assert f"LoRA weights: {weights}" in got.stdout and weights.stat().st_size > 0
    compare, curve = out / "validation_compare.png", out / "loss_curve.png"
    assert f"without | with the LoRA: {compare}" in got.stdout and f"loss curve (2 steps): {curve}" in got.stdout
    assert "\n  the two images " in got.stdout  # how far apart they are, measured
    width, height = png_size(compare)
    assert width >= 2 * 256 and 256 <= height < width / 1.5  # two renders (32 px, scaled up) side by side
    assert png_size(curve) == (720, 420)

    shell = subprocess.run(["bash", "-c", readme_inference(tiny / "model", out)], cwd=tmp_path, env={
        **env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}, capture_output=True, text=True, timeout=1800)
    assert shell.returncode == 0, shell.stderr[-3000:]
    assert png_size(tmp_path / "pokemon_w_lora.png")[0] > 0


@pytest.mark.slow
@pytest.mark.network
def test_bootstrap_says_where_sd_env_is_and_links_it_when_asked(mirrored, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON")}
    env.update(SD_ENV_HOME=str(mirrored), HOME=str(tmp_path), HF_HUB_OFFLINE="1", COLUMNS="200")
    got = subprocess.run([str(ROOT / "bootstrap.sh"), "--link"], env=env, capture_output=True, text=True,
                         timeout=3600)
    assert got.returncode == 0, got.stderr[-3000:]
    tool = mirrored / "tool" / "bin" / "sd-env"
    link = tmp_path / ".local" / "bin" / "sd-env"
    assert link.is_symlink() and link.resolve() == tool.resolve()
    assert f"linked {link} -> {tool}" in got.stderr and "is not on your PATH" in got.stderr
    last = got.stderr.strip().splitlines()[-1]
    assert last == (f"* sd-env is {tool}: `SD_ENV_HOME={mirrored} {tool} shell` enters the environment, "
                    f"`SD_ENV_HOME={mirrored} {tool} train --model DIR --data DIR` trains a LoRA")
    assert not list(tmp_path.glob(".bashrc")) and not list(tmp_path.glob(".profile"))  # no profile edited
