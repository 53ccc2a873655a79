"""Sophgo's current stack (-m sc7-sd15-lora: torch 2.8, accelerate 0.30.1, diffusers 0.29.2) on the
emulated torch_tpu 2.8, against the real code: `verify --emulate`, and each patch's proof pair.

The stack is installed once per session (conftest's sd15_home). The example script exists
only in diffusers' git history: without a git mirror holding v0.29.2 the tests that run it
say skipped and why. Sophgo's own patch and script come from a sophgo/torch-tpu git
repository ($SD_ENV_TEST_TORCH_TPU_GIT), read only; nothing of it is in this repository.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core.manifest import load
from sd_env.patching import inplace
from sd_env.system.probe import script as probe_script
from sd_env.verify import emulation
from tests.conftest import SD15_MANIFEST

pytestmark = pytest.mark.slow
EXAMPLE = "examples/text_to_image/train_text_to_image_lora.py"
EMULATED_ROWS = ("linear smoke", "lora step (fp16)", "lora step (fp32)", "inference")
BANNED = "not support int64, please use int32"  # torch_tpu 2.8's EmptyStrided.cpp


def strict_env(emu: emulation.Emulator, **extra: str) -> dict[str, str]:
    setup = emulation.settings(load(SD15_MANIFEST), emu)  # the manifest names the torch_tpu-2.8 profile
    assert setup.profile is not None and setup.profile.name == "torch_tpu-2.8.json"
    return {**os.environ, **emulation.environment(emu, "tpu:0", setup), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", **extra}


def needs_example(home: Path) -> Path:
    checkout = home / "src" / "diffusers"
    if not (checkout / EXAMPLE).is_file():
        pytest.skip("skipped: diffusers came from its PyPI sdist, which has no examples/: a git mirror with "
                    "diffusers v0.29.2 (SD_ENV_TEST_GIT_MIRROR, or shared/mirrors) gives the example script")
    return checkout


def pristine(checkout: Path, rel: str, out: Path) -> Path:
    """`rel` of the checkout's upstream commit, without our patch (the patch is a working-tree change)."""
    out.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(checkout), "archive", "HEAD", rel], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / rel


def ahead(emu: emulation.Emulator, folder: Path) -> str:
    """PYTHONPATH with `folder` first (an unpatched copy shadows the installed package), then the emulator."""
    return os.pathsep.join([str(folder), emulation.environment(emu)["PYTHONPATH"]])


def proof(python: Path, env: dict[str, str]) -> dict:
    done = subprocess.run([str(python), str(probe_script("accelerate_proof.py"))], env=env, capture_output=True,
                          text=True, timeout=900)
    return json.loads(done.stdout.splitlines()[-1])


def verify(home: Path, capsys, *flags: str) -> tuple[int, dict, dict]:
    capsys.readouterr()
    code = main(["verify", "--json", "-m", str(SD15_MANIFEST), "--home", str(home), "--emulate", *flags])
    doc = json.loads(capsys.readouterr().out)
    return code, doc, {c["name"]: c for c in doc["checks"]}


def test_verify_emulate_quick_on_the_current_stack(sd15_home, sd15_emulator, capsys) -> None:
    """Runs wherever the stack installs (the example script is not needed for --quick)."""
    code, _, rows = verify(sd15_home, capsys, "--quick")
    assert code == 0 and rows["linear smoke"]["device"] == "tpu:0 (emulated)", json.dumps(rows, indent=2)
    assert "torch_tpu 2.8 (CPU-backed)" in rows["emulator"]["detail"]
    assert "strict profile torch_tpu-2.8" in rows["emulator"]["detail"]


def test_verify_emulate_on_the_current_stack(sd15_home, sd15_emulator, capsys) -> None:
    """With diffusers from git, the patched v0.29.2 example trains; from its sdist (no examples/), sd-env's
    own step in the peft form of that example (probes/lora_step.py: diffusers 0.29 has no LoRAAttnProcessor)."""
    from_git = (sd15_home / "src" / "diffusers" / EXAMPLE).is_file()
    label = "the patched v0.29.2 example script" if from_git else \
        "sd-env's equivalent step (the example script is not in diffusers' sdist)"
    code, doc, rows = verify(sd15_home, capsys)
    assert code == 0 and doc["emulated"] is True, json.dumps(rows, indent=2)
    assert "torch_tpu 2.8 (CPU-backed)" in rows["emulator"]["detail"]
    assert "strict profile torch_tpu-2.8" in rows["emulator"]["detail"]  # the manifest names it
    for name in EMULATED_ROWS:
        assert rows[name]["status"] == "ok" and rows[name]["device"] == "tpu:0 (emulated)", rows[name]
    for label in ("fp16", "fp32"):
        detail = rows[f"lora step ({label})"]["detail"]
        assert label in detail and "LoRA weights moved" in detail, detail
        assert "measured: trained parameters and loss on tpu:0" in detail, detail
        assert "peak tpu memory" in detail and "LoRA layers in fp32" in detail, detail
    assert "loss scaling on (torch_tpu.tpu.amp.grad_scaler.GradScaler" in rows["lora step (fp16)"]["detail"]
    assert "as Sophgo's SD 1.5 demo validates" in rows["inference"]["detail"]
    assert "the same image twice" in rows["inference"]["detail"]


def test_unpatched_accelerate_refuses_fp16_on_tpu_ours_trains(sd15_home, sd15_emulator, tmp_path) -> None:
    python, emu = sd15_emulator
    upstream = pristine(sd15_home / "src" / "accelerate", "src/accelerate", tmp_path / "upstream")
    got = proof(python, strict_env(emu, PYTHONPATH=ahead(emu, upstream.parent)))
    # Accelerator(mixed_precision="fp16") itself raises: upstream's fp16 device list lacks "tpu"
    assert got["ok"] is False and "fp16 mixed precision requires a GPU (not 'tpu')" in got["error"], got
    ours = proof(python, strict_env(emu))
    assert ours["ok"] and ours["trained"] and ours["skipped_on_inf"], ours
    assert ours["scaler"] == "torch_tpu.tpu.amp.grad_scaler.GradScaler" and ours["device"] == "tpu:0", ours
    assert ours["steps"][-1]["scale_after"] == ours["steps"][-1]["scale_before"] / 2


def run_example(python: Path, script: Path, tiny: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [str(python), str(script), "--pretrained_model_name_or_path", str(tiny / "model"), "--train_data_dir",
            str(tiny / "data"), "--resolution", "32", "--center_crop", "--train_batch_size", "1", "--max_train_steps",
            "2", "--seed", "0", "--dataloader_num_workers", "0", "--mixed_precision", "no", "--output_dir", str(out)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)


def test_int64_timesteps_are_refused_by_the_strict_profile_int32_train(sd15_home, sd15_emulator, tmp_path) -> None:
    """The unpatched example draws its timesteps as int64 on the device (torch.randint's default), which the
    2.8-era plugin refuses since 2025-03 (the profile's int64-alloc-refused); ours draws int32 and trains."""
    checkout = needs_example(sd15_home)
    python, emu = sd15_emulator
    tiny = tmp_path / "tiny"
    subprocess.run([str(python), str(probe_script("tiny_sd.py")), "--out", str(tiny)], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    unpatched = pristine(checkout, EXAMPLE, tmp_path / "upstream")
    got = run_example(python, unpatched, tiny, tmp_path / "out-unpatched", strict_env(emu))
    assert got.returncode != 0 and BANNED in got.stderr, got.stderr[-3000:]
    assert "torch.randint(0, noise_scheduler.config.num_train_timesteps" in got.stderr  # the line that draws them
    lenient = {k: v for k, v in strict_env(emu).items() if k != "SD_ENV_EMULATED_PROFILE"}
    got = run_example(python, unpatched, tiny, tmp_path / "out-lenient", lenient)
    assert got.returncode == 0, got.stderr[-3000:]  # only the strict device refuses it
    got = run_example(python, checkout / EXAMPLE, tiny, tmp_path / "out-patched", strict_env(emu))
    assert got.returncode == 0 and "2/2" in got.stderr, got.stderr[-3000:]


def torch_tpu_git() -> Path | None:
    given = os.environ.get("SD_ENV_TEST_TORCH_TPU_GIT")
    return Path(given) if given and Path(given).exists() else None


def test_sophgos_own_patch_applied_in_place_is_recognised_and_trains(sd15_home, sd15_emulator, tmp_path) -> None:
    """Sophgo's accelerate-Sophgo.patch, applied by Sophgo's apply_revert_patch.py into an installed (not
    editable) accelerate 0.30.1, the way its SD 1.5 demo's setup does it."""
    repo = torch_tpu_git()
    if repo is None:
        pytest.skip("skipped: needs a sophgo/torch-tpu git repository for Sophgo's patch and script "
                    "(SD_ENV_TEST_TORCH_TPU_GIT); neither is copied into this repository")
    python, emu = sd15_emulator
    site = tmp_path / "site"  # an installed accelerate 0.30.1: the package and its dist-info
    site.mkdir()
    pristine(sd15_home / "src" / "accelerate", "src/accelerate", tmp_path / "upstream").rename(site / "accelerate")
    info = site / "accelerate-0.30.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: accelerate\nVersion: 0.30.1\n")
    sophgo = tmp_path / "sophgo"
    (sophgo / "patch").mkdir(parents=True)
    for rel, dest in (("torch_tpu/utils/apply_revert_patch.py", sophgo / "apply_revert_patch.py"),
                      ("torch_tpu/demo/patch/accelerate-Sophgo.patch", sophgo / "patch" / "accelerate-Sophgo.patch")):
        dest.write_bytes(subprocess.run(["git", "--git-dir", str(repo), "show", f"HEAD:{rel}"], check=True,
                                        capture_output=True).stdout)
    apply = (f"import sys; sys.path.insert(0, {str(sophgo)!r}); import apply_revert_patch as a; "
             f"a.PATCH_DIR = {str(sophgo / 'patch')!r}; a.apply_certain_patch('accelerate', 'accelerate-Sophgo')")
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([str(python), "-c", apply], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (site / "accelerate" / "sophgo.py").is_file(), done.stderr[-2000:]
    found = inplace.in_site([{"path": str(info), "editable": False}], "accelerate")
    assert found is not None and found.describe().startswith("patched in place by Sophgo's in-place patch script")
    got = proof(python, strict_env(emu, PYTHONPATH=ahead(emu, site)))
    assert got["accelerate_file"].startswith(str(site)), got
    assert got["ok"] and got["trained"] and got["skipped_on_inf"] and got["torch_tpu_scaler"], got


def test_repatch_proof_on_a_torch_28_target(sd15_target, sd15_emulator) -> None:
    """`sd-env repatch`'s proof of an accelerate port runs on the torch 2.8 stack's emulator as on 2.1, on the
    device the manifest's [emulator] sets up (the strict torch_tpu-2.8 profile)."""
    from sd_env.system.runner import Runner
    from sd_env.verify import proof

    python, paths = sd15_target
    (row,) = proof.after_port(Runner(), python, paths, "accelerate", load(SD15_MANIFEST))
    assert row.status == "ok" and row.detail.startswith(
        "ported and proven (emulated, strict profile torch_tpu-2.8): an fp16 Accelerator on tpu:0"), row
