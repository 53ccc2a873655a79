"""`sd-env verify --emulate`: the real-work rows on the emulated tpu, in the real environment.

In CI the home is the bootstrapped one (accelerate and diffusers from the shared
git mirrors, so the LoRA rows run the patched example script). While developing,
with SD_ENV_TEST_TARGET=/work/devhome, the emulator fixture's home gets links to
that home's venv, checkouts and state: verify writes only its cache and logs,
into the test's home, never into the target.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sd_env.cli import main

EMULATED_ROWS = ("linear smoke", "lora step (fp16)", "lora step (fp32)", "inference")


@pytest.fixture(scope="session")
def verify_home(emulator_target, emulator) -> Path:
    python, paths = emulator_target
    home = paths.home
    target = python.parents[2]
    if target != home:  # a development target: link what verify reads, keep what it writes here
        for name in ("venv", "src", "state.json"):
            if not (home / name).exists():
                os.symlink(target / name, home / name)
    return home


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
    assert "the same image twice" in rows["inference"]["detail"]
    assert "- Device: tpu:0 wanted, checks ran on tpu:0 (emulated)" in doc["environment"]
    # What a fleet report reads: the run was emulated, and no torch_tpu or driver is installed.
    assert doc["facts"]["torch_tpu"] == {**doc["facts"]["torch_tpu"], "version": None, "emulated": True}
    assert [c["name"] for c in doc["facts"]["components"]] == ["accelerate", "diffusers", "transformers"]
    # The emulation stays out of the target environment.
    assert not list((verify_home / "venv").glob("lib/python*/site-packages/torch_tpu*"))


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
