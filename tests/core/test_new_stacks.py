"""The other shipped stacks: their era locks (complete, hashed, of their era) and the SD 1.5 example patch.

The full installs are in bench/stacks_bench.py (GBs each); here only what is fast.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sd_env.core import lockfile, manifest
from sd_env.patching import patches
from tests.conftest import ROOT, git

PY310 = manifest.load(ROOT / "manifests" / "sc7-sd14-lora-py310.toml")
SD15 = manifest.load(ROOT / "manifests" / "sc7-sd15-lora.toml")
DEFAULT = manifest.load(ROOT / "manifests" / "sc7-sd14-lora.toml")
EXAMPLE = "examples/text_to_image/train_text_to_image_lora.py"


def test_py310_lock_is_the_default_stack_for_python_310():
    lock, default = lockfile.read(PY310.lock.files["pypi"]), lockfile.read(DEFAULT.lock.files["pypi"])
    assert set(lock.pins) == set(default.pins) and all(lock.hashes[n] for n in lock.pins)
    assert lock.pins["torch"] == "2.1.0" and lock.pins["numpy"] == "1.25.2"
    assert [(c.name, c.tag, c.commit, c.patches) for c in PY310.components] == \
        [(c.name, c.tag, c.commit, c.patches) for c in DEFAULT.components]
    argv = " ".join(lockfile.compile_argv(PY310, "pypi", "uv", Path("out.txt")))
    assert "--python-version 3.10 " in argv and "--exclude-newer 2023-08-31T00:00:00Z" in argv


def test_sd15_lock_pins_sophgos_current_stack():
    lock = lockfile.read(SD15.lock.files["pypi"])
    assert all(lock.hashes[n] for n in lock.pins)
    assert lock.pins["torch"] == "2.8.0" and lock.pins["torchvision"] == "0.23.0"
    assert lock.pins["peft"] == "0.7.0" and lock.pins["numpy"].startswith("1.")
    assert lock.pins["tokenizers"].startswith("0.19.")  # what transformers 4.41.2 accepts
    assert not {"accelerate", "diffusers", "transformers", "torch-tpu"} & set(lock.pins)
    argv = " ".join(lockfile.compile_argv(SD15, "pypi", "uv", Path("out.txt")))
    assert "--python-version 3.11 " in argv and "--exclude-newer 2025-11-30T00:00:00Z" in argv
    versions = {c.name: c.version for c in SD15.components}
    assert versions == {"accelerate": "0.30.1", "diffusers": "0.29.2", "transformers": "4.41.2"}
    assert [p.name for p in SD15.component("accelerate").patches] == ["accelerate-0.30.0-tpu.diff"]


def diffusers_git() -> Path | None:
    """A diffusers git repository with the v0.29.2 tag: $SD_ENV_TEST_DIFFUSERS_GIT, or under $SD_ENV_GIT_MIRROR."""
    mirror = os.environ.get("SD_ENV_GIT_MIRROR")
    for base in (os.environ.get("SD_ENV_TEST_DIFFUSERS_GIT"), mirror and f"{mirror}/huggingface/diffusers.git"):
        if base and subprocess.run(["git", "-C", base, "rev-parse", "-q", "--verify", "v0.29.2^{commit}"],
                                   capture_output=True).returncode == 0:
            return Path(base)
    return None


def test_sd15_example_patch_is_made_on_the_v0292_file():
    patch = patches.load(ROOT / "patches" / "diffusers-0.29.2-train-lora.diff")
    assert [f.path for f in patch.files] == [EXAMPLE]
    assert "c586aadef6bb66d355fa40a2b95a0bea8a6fe79c" in patch.header["Upstream-Version"]
    assert SD15.component("diffusers").commit == "c586aadef6bb66d355fa40a2b95a0bea8a6fe79c"
    added = [ln[1:].strip() for ln in patch.text.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert "0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device, dtype=torch.int32" in added
    removed = [ln[1:].strip() for ln in patch.text.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    assert "timesteps = timesteps.long()" in removed


def test_sd15_example_patch_applies_to_the_real_script(tmp_path):
    repo = diffusers_git()
    if repo is None:
        pytest.skip("skipped: no diffusers git repository with v0.29.2 here (the example is not in the PyPI "
                    "sdist); set SD_ENV_TEST_DIFFUSERS_GIT or SD_ENV_GIT_MIRROR")
    blob = git(repo, "rev-parse", f"v0.29.2:{EXAMPLE}")
    patch = ROOT / "patches" / "diffusers-0.29.2-train-lora.diff"
    assert f"index {blob}.." in patch.read_text(), "made against another version of the script"
    work = tmp_path / "diffusers"
    (work / EXAMPLE).parent.mkdir(parents=True)
    (work / EXAMPLE).write_text(git(repo, "show", f"v0.29.2:{EXAMPLE}") + "\n")
    git(work, "init", "-q")
    assert subprocess.run(["git", "-C", str(work), "apply", str(patch)], capture_output=True).returncode == 0
    compile((work / EXAMPLE).read_text(), EXAMPLE, "exec")
