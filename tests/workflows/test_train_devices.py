"""`sd-env train --devices`: one process per device through accelerate's launcher, and its refusals;
`sd-env verify --devices N`: an all-reduce and 2 data-parallel LoRA steps across N devices (emulated here).

The fast tests refuse before anything runs: a device listed twice, both --device and --devices, a home
whose accelerate lacks the multi-device patch (the error names the patch and the shipped stack that has
it), a device set that skips tpu:0. The slow one installs the shipped sc7-sd14-lora-multi stack for real
(the uv cache and the git mirror make it about 20 s), then trains the tiny model on 2 emulated devices with
`sd-env train --emulate --devices 0,1` and reads what rank 0 left: the LoRA, the pictures and the run record
with both ranks' devices as the precision watch saw them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core import state
from sd_env.errors import InputError
from sd_env.system.paths import Paths
from sd_env.target import multidevice
from sd_env.verify import emulation
from sd_env.workflows import devices
from tests.conftest import ROOT, shared_mirrors

DEFAULT = ROOT / "manifests" / "sc7-sd14-lora.toml"
MULTI = ROOT / "manifests" / "sc7-sd14-lora-multi.toml"


def test_device_lists_are_read_once_each():
    assert devices.parse("0,1") == [0, 1] and devices.parse("tpu:0, tpu:1") == [0, 1]
    assert devices.parse("all") is None
    with pytest.raises(InputError, match="tpu:1 listed twice"):
        devices.parse("0,1,1")
    with pytest.raises(InputError, match="not a list of device indices"):
        devices.parse("0,x")


def test_devices_are_checked_against_the_targets_count():
    assert devices.plan(None, 3, "here").devices == [0, 1, 2]  # all
    assert devices.plan([1], 2, "here").devices == [1]  # one device alone: any of them
    with pytest.raises(InputError, match=r"tpu:2 does not exist: torch_tpu sees 2 device\(s\) \(tpu:0, tpu:1; here"):
        devices.plan([0, 2], 2, "here")
    with pytest.raises(InputError, match="must be tpu:0 to tpu:N-1") as info:
        devices.plan([1, 2], 3, "here")  # process k trains on tpu:k (the patch's LOCAL_RANK)
    assert "--devices 0,1" in info.value.hint
    with pytest.raises(InputError, match="sees no device"):
        devices.plan(None, 0, "here")


def test_the_global_batch_and_the_learning_rate_are_said():
    two = devices.Plan([0, 1])
    said = devices.batch_note(two, 4, 2, "1e-04", scale_lr=False)
    assert "global batch 16 (2 devices x 4 per device x 2 gradient accumulation)" in said
    assert "learning rate 1e-04 as given, not scaled" in said
    assert "scaled by the script (--scale_lr) to 0.0016 (x 16)" in devices.batch_note(two, 4, 2, "1e-04", True)


def refuse(capsys, home: Path, python: Path, *flags: str, manifest: Path = DEFAULT) -> str:
    code = main(["train", "-m", str(manifest), "--home", str(home), "--python", str(python), "--model", "m",
                 "--data", "d", *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    return err


def test_train_refuses_what_several_devices_cannot_do(capsys, tmp_path, fresh_target):
    home = tmp_path / "home"
    err = refuse(capsys, home, fresh_target, "--devices", "0,1,0")
    assert "error: --devices 0,1,0: tpu:0 listed twice" in err and "hint: name each device once" in err
    err = refuse(capsys, home, fresh_target, "--devices", "0,1", "--device", "tpu:1")
    assert "--device and --devices both given" in err
    # A home installed from the default stack: the tutorial's patch alone is recorded.
    applied = state.AppliedPatch("accelerate-0.16.0-tpu.diff", "0" * 64, "0" * 40)
    state.save(state.State({"accelerate": state.ComponentState("git", "v0.16.0", "0" * 40, patches=[applied],
                                                               version="0.16.0")}), Paths(home).state)
    err = refuse(capsys, home, fresh_target, "--devices", "0,1")
    assert "multi-device patch accelerate-0.16.0-tpu-multi.diff" in err
    assert "(applied: accelerate-0.16.0-tpu.diff; without it accelerate does not start one process per" in err
    assert "hint: install the stack that carries it in a home of its own: sd-env install -m sc7-sd14-lora-multi" in err


def test_the_missing_patch_is_named_for_the_homes_accelerate(tmp_path):
    """A home of the torch 2.8 stack: its multi patch is named for the 0.30.0 port it goes on, not 0.30.1."""
    applied = state.AppliedPatch("accelerate-0.30.0-tpu.diff", "0" * 64, "0" * 40)
    state.save(state.State({"accelerate": state.ComponentState("git", "v0.30.1", "0" * 40, patches=[applied],
                                                               version="0.30.1")}), Paths(tmp_path).state)
    with pytest.raises(InputError) as got:
        multidevice.require_multi_patch(Paths(tmp_path), "0.30.1")
    assert "multi-device patch accelerate-0.30.0-tpu-multi.diff" in str(got.value)
    assert "sd-env install -m sc7-sd15-lora-multi" in got.value.hint
    with pytest.raises(InputError) as got:
        multidevice.require_multi_patch(Paths(tmp_path), "0.21.0")
    assert "accelerate-0.21.0-tpu-multi.diff" in str(got.value) and "no shipped stack carries" in str(got.value)


def test_verify_devices_without_a_card_says_why_its_rows_did_not_run(capsys, tmp_path, fresh_target):
    """Without --emulate the rows run on the card's devices; with no card they are skipped, not faked."""
    code = main(["verify", "-m", str(DEFAULT), "--home", str(tmp_path / "home"), "--python", str(fresh_target),
                 "--devices", "2", "--quick", "--json"])
    rows = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    for name in ("all-reduce (2 devices)", "data-parallel lora (2 devices)"):
        assert rows[name]["status"] == "skipped", rows[name]
        assert rows[name]["detail"].startswith("skipped: no SC7 card here"), rows[name]
        assert "sd-env verify --emulate --devices 2 runs this row on 2 emulated devices" in rows[name]["detail"]
    assert code in (0, 1)  # other rows judge a bare venv; these two never fail it


@pytest.fixture(scope="module")
def multi_home(emulated_target, tmp_path_factory) -> Iterator[Path]:
    """The shipped multi-device stack installed for real into a fresh home (its accelerate carries the
    multi-device patch, as the state records), with the session's emulator build placed in its cache."""
    mirrors = shared_mirrors()
    if mirrors is None:
        pytest.skip("skipped: no shared/mirrors beside the repository (diffusers' example script is only in git)")
    home = tmp_path_factory.mktemp("multi") / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON")}
    got = subprocess.run([sys.executable, "-m", "sd_env", "install", "-m", str(MULTI), "--home", str(home)],
                         env={**env, "SD_ENV_GIT_MIRROR": str(mirrors)}, capture_output=True, text=True, timeout=3600)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert "applied accelerate-0.16.0-tpu.diff (sha256" in got.stdout
    assert "accelerate-0.16.0-tpu-multi.diff (sha256" in got.stdout
    _python, emu = emulated_target
    # The same torch, Python and emulator source make the same key: the build is reused, not redone.
    shutil.copytree(emu.pythonpath, Paths(home).emulators / emu.key, symlinks=True)
    yield home
    shutil.rmtree(home.parent, ignore_errors=True)  # about 5 GB of (mostly hard-linked) venv


def sd_env(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SG_MAX_DEVICE_COUNT")}
    # One thread per process: 2 processes on 2 cores (see verify.ONE_THREAD).
    clean.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "sd_env", "train", "-m", str(MULTI), "--home", str(home), *args],
                          env=clean, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
@pytest.mark.network
def test_train_on_two_emulated_devices_writes_one_lora_and_records_both(multi_home, tiny, tmp_path):
    out = tmp_path / "lora"
    got = sd_env(multi_home, "--emulate", "--devices", "0,1", "--model", str(tiny / "model"), "--data",
                 str(tiny / "data"), "--output", str(out), "--resolution", "32", "--max-train-steps", "2",
                 "--inference-steps", "2", "--validation-images", "0")
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-4000:]
    assert "python -m accelerate.commands.launch --multi_gpu --num_processes 2" in got.stderr
    assert "Distributed environment: MULTI_GPU  Backend: sccl" in got.stderr
    assert "Device: tpu:0" in got.stderr and "Device: tpu:1" in got.stderr  # one process per device
    assert ("2 processes on tpu:0, tpu:1: global batch 2 (2 devices x 1 per device x 1 gradient accumulation); "
            "learning rate 1e-04 as given, not scaled") in got.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 2" in got.stderr  # the script agrees
    assert "only the card's bm-smi shows it" in got.stderr  # busy devices: said, not faked
    weights = out / "pytorch_lora_weights.safetensors"
    assert f"LoRA weights: {weights}" in got.stdout and weights.stat().st_size > 0  # rank 0 wrote it
    assert (out / "validation_compare.png").is_file() and (out / "loss_curve.png").is_file()
    record = json.loads((out / "sd-env-run.json").read_text())
    assert record["device"]["asked"] == "tpu:0,tpu:1" and record["device"]["processes"] == 2
    assert record["device"]["emulated"] is True
    # Measured by the precision watch in each process: both ranks' losses and trained parameters.
    assert record["device"]["measured"] == {"loss": ["tpu:0", "tpu:1"], "trained": ["tpu:0", "tpu:1"]}


@pytest.mark.slow
@pytest.mark.network
def test_a_device_the_target_lacks_is_refused_before_training(multi_home, tiny, tmp_path):
    got = sd_env(multi_home, "--emulate", "--devices", "0,2", "--model", str(tiny / "model"), "--data",
                 str(tiny / "data"), "--output", str(tmp_path / "lora"), SG_MAX_DEVICE_COUNT="2")
    assert got.returncode == 2, got.stderr[-3000:]
    assert ("error: --devices: tpu:2 does not exist: torch_tpu sees 2 device(s) (tpu:0, tpu:1; emulated, "
            "SG_MAX_DEVICE_COUNT=2)") in got.stderr
    assert not (tmp_path / "lora").exists()


def test_emulated_note_names_the_device():
    emu = emulation.Emulator(Path("/x"), True, 0.0, "torch2.1.0-py3.9-k")
    assert emulation.note(emu, "tpu:1").startswith("tpu:1 is emulated: torch_tpu 2.1 on the CPU (cached,")


@pytest.mark.slow
@pytest.mark.network
def test_verify_emulate_devices_adds_all_reduce_and_data_parallel_rows(multi_home, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    got = subprocess.run([sys.executable, "-m", "sd_env", "verify", "-m", str(MULTI), "--home", str(multi_home),
                          "--emulate", "--devices", "2", "--json"], env=env, capture_output=True, text=True,
                         timeout=1800)
    doc = json.loads(got.stdout)
    rows = {c["name"]: c for c in doc["checks"]}
    assert got.returncode == 0, json.dumps(rows, indent=2)
    names = [c["name"] for c in doc["checks"]]
    assert names.index("all-reduce (2 devices)") + 1 == names.index("data-parallel lora (2 devices)")
    row = rows["all-reduce (2 devices)"]
    assert row["status"] == "ok", row
    assert row["device"] == "tpu:0, tpu:1 (emulated)"
    assert '"sccl" across tpu:0, tpu:1 (emulated): sum 3 (expected 3); 3,188,736 bytes' in row["detail"]
    assert "int64: ProcessGroupSCCL::allreduce: int64 (torch.int64) tensors are not supported" in row["detail"]
    row = rows["data-parallel lora (2 devices)"]
    assert row["status"] == "ok", row
    assert row["device"] == "tpu:0, tpu:1 (emulated)"  # measured: each rank's loss and trained parameters
    assert row["detail"].startswith("ran on tpu:0, tpu:1 (emulated), the patched v0.20.0 example script through "
                                    "accelerate launch --multi_gpu --num_processes 2 "
                                    "(accelerate-0.16.0-tpu-multi.diff), fp32"), row["detail"]
    assert "every rank ends with the same LoRA weights (64 trained tensors, sha256 " in row["detail"]
    assert "started equal and moved on every rank" in row["detail"] and "(finite)" in row["detail"]
    print(f"data-parallel lora (2 devices): {row['seconds']:.1f} s")  # pytest -s shows it
