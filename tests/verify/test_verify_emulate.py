"""`sd-env verify --emulate`: the real-work rows on the emulated tpu, in the real environment.

In CI the home is the bootstrapped one (accelerate and diffusers from the shared
git mirrors, so the LoRA rows run the patched example script). While developing,
with SD_ENV_TEST_TARGET=/work/devhome, the emulator fixture's home gets links to
that home's venv, checkouts and state: verify writes only its cache and logs,
into the test's home, never into the target.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core.manifest import load
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import emulated as verify_emulated
from sd_env.verify import emulation
from sd_env.verify.context import Context, model_and_data
from tests.conftest import ROOT

EMULATED_ROWS = ("linear smoke", "lora step (fp16)", "lora step (fp32)", "inference")


def verify_json(home: Path, capsys, *flags: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["verify", "--json", "--home", str(home), "--python", str(home / "venv"), *flags])
    return code, json.loads(capsys.readouterr().out)


def by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


@pytest.mark.slow
def test_verify_emulate_runs_on_the_emulated_tpu_and_says_so(verify_home, capsys):
    code, doc = verify_json(verify_home, capsys, "--emulate")
    rows = by_name(doc)
    assert code == 0 and doc["emulated"] is True, json.dumps(rows, indent=2)
    assert "only an SC7 card can show the real device" in rows["torch_tpu"]["detail"]
    assert rows["emulator"]["status"] == "ok"
    for name in EMULATED_ROWS:
        assert rows[name]["status"] == "ok", rows[name]
        assert rows[name]["device"] == "tpu:0 (emulated)" and "ran on tpu (emulated)" in rows[name]["detail"]
    fp16, fp32 = rows["lora step (fp16)"]["detail"], rows["lora step (fp32)"]["detail"]
    assert "fp16 requested; UNet forward: frozen layers ran in fp16" in fp16 and "LoRA layers in fp32" in fp16
    assert "loss scaling on (torch_tpu.tpu.amp" in fp16 and "autocast off" in fp16
    assert "frozen layers ran in fp32" in fp32 and "loss scaling off" in fp32
    assert "LoRA weights moved" in fp16 and "LoRA weights moved" in fp32
    # where the work ran is measured in the training process, not taken from the request
    for detail in (fp16, fp32):
        assert "measured: trained parameters and loss on tpu:0" in detail
    assert "measured: pipeline parameters and UNet output on tpu:0" in rows["inference"]["detail"]
    assert "the same image twice" in rows["inference"]["detail"]
    assert "- Device: tpu:0 wanted, checks ran on tpu:0 (emulated)" in doc["environment"]
    # What a fleet report reads: the run was emulated, and no torch_tpu or driver is installed.
    assert doc["facts"]["torch_tpu"] == {**doc["facts"]["torch_tpu"], "version": None, "emulated": True}
    assert [c["name"] for c in doc["facts"]["components"]] == ["accelerate", "diffusers", "transformers"]
    # The emulation stays out of the target environment.
    assert not list((verify_home / "venv").glob("lib/python*/site-packages/torch_tpu*"))


@pytest.mark.slow
def test_a_training_run_that_falls_back_to_the_cpu_fails_its_row(verify_home, capsys, tmp_path, monkeypatch):
    """A site hook (a sitecustomize on the user's PYTHONPATH, which verify keeps behind its own entries)
    sets ACCELERATE_TORCH_DEVICE=cpu in every process: accelerate 0.16.0 takes the variable as it finds it
    when Accelerator() starts, so the example trains on the CPU while verify asked for tpu:0.
    (ACCELERATE_USE_CPU=1 would not do it: with ACCELERATE_TORCH_DEVICE set, 0.16.0 ignores it.)
    The rows must name the CPU and fail, never say "tpu (emulated)"."""
    hook = tmp_path / "site-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import os\nos.environ['ACCELERATE_TORCH_DEVICE'] = 'cpu'\n")
    monkeypatch.setenv("PYTHONPATH", str(hook))
    code, doc = verify_json(verify_home, capsys, "--emulate")
    rows = by_name(doc)
    assert code == 1 and rows["linear smoke"]["status"] == "ok"  # the hook moves accelerate's runs only
    fp32 = rows["lora step (fp32)"]
    assert (fp32["status"], fp32["device"]) == ("fail", "cpu"), fp32
    assert fp32["detail"].startswith("asked for tpu:0 (emulated), the patched v0.20.0 example script: the work did "
                                     "not run on tpu:0 alone: trained parameters and loss on cpu"), fp32["detail"]
    fp16 = rows["lora step (fp16)"]  # on the CPU fp16 stops before any backward: nothing measured, no device named
    assert (fp16["status"], fp16["device"]) == ("fail", None) and "ran on" not in fp16["detail"], fp16
    assert rows["inference"]["status"] == "skipped"


@pytest.mark.slow
def test_sd_envs_own_step_names_the_device_it_measured(verify_home, emulator):
    """Where diffusers has no example script (its sdist), the LoRA row is sd-env's own step
    (probes/lora_step.py): it reports where its loss and trained parameters were, and the row says so."""
    python = verify_home / "venv" / "bin" / "python"
    runner = verify_emulated.EnvRunner.around(Runner(), emulation.environment(emulator, verify_emulated.DEVICE))
    ctx = Context(load(ROOT / "manifests" / "sc7-sd14-lora.toml"), Paths(verify_home), runner, python,
                         device=verify_emulated.DEVICE, emulated=True)
    inputs = model_and_data(ctx)
    step = verify_emulated.lora_step(ctx, [], inputs, "no", "fp32")  # no diffusers row: sd-env's own step
    assert (step.status, step.device) == ("ok", "tpu:0 (emulated)"), step
    assert "sd-env's equivalent step" in step.detail
    assert "measured: trained parameters and loss on tpu:0" in step.detail
    nowhere = dataclasses.replace(ctx, python=verify_home / "no-python")  # nothing ran: nothing to name
    failed = verify_emulated.lora_step(nowhere, [], inputs, "no", "fp32")
    assert (failed.status, failed.device) == ("fail", None) and failed.detail.startswith("asked for tpu:0 (emulated)")


@pytest.mark.slow
def test_verify_emulate_reuses_the_cached_build(verify_home, capsys):
    code, doc = verify_json(verify_home, capsys, "--emulate", "--quick")
    rows = by_name(doc)
    assert code == 0 and rows["emulator"]["detail"].startswith("sd-env's emulated torch_tpu 2.1 (CPU-backed), cached")
    assert rows["linear smoke"]["status"] == "ok" and rows["lora step (fp16)"]["status"] == "skipped"


def test_verify_emulate_without_torch_is_a_failed_row_not_a_traceback(target_python, tmp_path, capsys):
    code, doc = verify_json_at(tmp_path / "home", target_python, capsys)
    rows = by_name(doc)
    assert code == 1
    assert rows["emulator"]["status"] == "fail", rows["emulator"]
    assert "cannot build the emulated torch_tpu" in rows["emulator"]["detail"]
    assert "-> install torch==2.1.0" in rows["emulator"]["detail"]  # the hint, on the row
    for name in EMULATED_ROWS:
        assert rows[name]["status"] == "skipped" and "not available" in rows[name]["detail"], rows[name]
    assert "Traceback" not in json.dumps(doc)


def verify_json_at(home: Path, python: Path, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["verify", "--json", "--emulate", "--home", str(home), "--python", str(python)])
    return code, json.loads(capsys.readouterr().out)
