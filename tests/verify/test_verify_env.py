"""sd-env verify on the real environment: healthy, then broken on purpose, then repaired.

Each breaking test repairs what it broke (with sd-env itself where that is
what a user would do), so the shared environment stays healthy.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core.manifest import load
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import checks as verify
from sd_env.verify.context import Context
from tests.conftest import ROOT, shared_mirrors

pytestmark = [pytest.mark.slow, pytest.mark.network]


def sd_env(home: Path, *args: str) -> int:
    return main([args[0], "--home", str(home), "--python", str(home / "venv"), *args[1:]])


def verify_json(home: Path, capsys, *flags: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = sd_env(home, "verify", "--json", *flags)
    return code, json.loads(capsys.readouterr().out)


def by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def pip(home: Path, *args: str) -> None:
    subprocess.run([str(home / "venv" / "bin" / "python"), "-m", "pip", *args, "-q",
                    "--disable-pip-version-check"], check=True)


def test_healthy_environment_trains_on_the_cpu_and_says_so(bootstrapped, capsys):
    home, _ = bootstrapped
    code, doc = verify_json(home, capsys)
    checks = by_name(doc)
    assert code == 0 and doc["exit_code"] == 0, checks
    assert checks["interpreter"]["status"] == "ok" and checks["pins"]["status"] == "ok"
    assert checks["torch_tpu"]["status"] == "skipped" and "no SC7 card" in checks["torch_tpu"]["detail"]
    for name in ("linear smoke", "lora step", "inference"):
        assert checks[name]["status"] == "ok" and checks[name]["device"] == "cpu", checks[name]
        assert "ran on cpu (no SC7 card)" in checks[name]["detail"]
    if shared_mirrors() is not None:  # diffusers from git: its patched example script trained
        assert "the patched v0.20.0 example script" in checks["lora step"]["detail"]
    else:  # diffusers from its sdist: the step is sd-env's equivalent, and says so
        assert "equivalent step" in checks["lora step"]["detail"]
    assert "64 LoRA tensors" in checks["lora step"]["detail"]
    assert "scale 0 equals the base pipeline" in checks["inference"]["detail"]
    assert any(line.startswith("- torch: 2.1.0") for line in doc["environment"])


def test_quick_and_fp16_on_the_cpu(bootstrapped, capsys):
    home, _ = bootstrapped
    code, doc = verify_json(home, capsys, "--quick")
    assert code == 0 and by_name(doc)["lora step"]["status"] == "skipped"
    code, doc = verify_json(home, capsys, "--mixed-precision", "fp16")
    step = by_name(doc)["lora step"]
    assert code == 0 and step["status"] == "n/a" and "not applicable on the CPU" in step["detail"]


def test_wrong_version_fails_pins_and_install_repairs_it(bootstrapped, capsys):
    home, _ = bootstrapped
    pip(home, "install", "--no-deps", "filelock==3.13.1")
    try:
        code, doc = verify_json(home, capsys, "--quick")
        assert code == 1
        assert "filelock: locked 3.12.3, installed 3.13.1" in by_name(doc)["pins"]["detail"]
    finally:
        assert sd_env(home, "install") == 0
    assert verify_json(home, capsys, "--quick")[0] == 0


def test_clobbered_accelerate_is_restored_by_repatch(bootstrapped, capsys):
    """The tutorial's trap: a plain reinstall replaces the patched editable accelerate."""
    home, _ = bootstrapped
    pip(home, "install", "accelerate==0.16.0", "--force-reinstall", "--no-deps")
    code, doc = verify_json(home, capsys, "--quick")
    assert code == 1
    detail = by_name(doc)["sources+patches"]["detail"]
    assert "accelerate: 0.16.0 installed normally (not the managed checkout)" in detail
    # One story: repatch, in verify and status alike; no word of local edits, as there are none.
    assert detail.endswith("-> run `sd-env repatch` to restore the pinned, patched, editable state")
    assert "local edits" not in detail
    # The bug-report block says what is installed, not what was recorded.
    assert any(line.startswith("- accelerate: 0.16.0 installed normally") for line in doc["environment"])
    assert "- patch accelerate-0.16.0-tpu.diff: applied in the managed checkout, which is not what is installed" \
        in doc["environment"]
    capsys.readouterr()
    assert sd_env(home, "status") == 0
    assert "`sd-env repatch` restores it" in capsys.readouterr().out
    assert sd_env(home, "repatch") == 0
    out = capsys.readouterr().out
    assert "found" in out and "installed normally" in out
    assert verify_json(home, capsys, "--quick")[0] == 0


def test_patch_reverted_by_hand_is_reported_then_reapplied(bootstrapped, capsys):
    home, _ = bootstrapped
    subprocess.run(["git", "-C", str(home / "src" / "accelerate"), "checkout", "--", "."], check=True)
    code, doc = verify_json(home, capsys, "--quick")
    assert code == 1
    assert "accelerate: accelerate-0.16.0-tpu.diff is not applied" in by_name(doc)["sources+patches"]["detail"]
    assert sd_env(home, "repatch") == 0
    assert verify_json(home, capsys, "--quick")[0] == 0


def test_edited_checkout_is_drift_naming_the_file(bootstrapped, capsys):
    home, _ = bootstrapped
    edited = home / "src" / "transformers" / "src" / "transformers" / "__init__.py"
    original = edited.read_bytes()
    edited.write_bytes(original + b"\n# my local experiment\n")
    try:
        code, doc = verify_json(home, capsys, "--quick")
        assert code == 1
        assert "transformers: local edits in src/transformers/__init__.py" in by_name(doc)["sources+patches"]["detail"]
    finally:
        edited.write_bytes(original)
    assert verify_json(home, capsys, "--quick")[0] == 0


def google_wheel(where: Path) -> Path:
    """A wheel with the metadata of Google's PyPI torch-tpu (the name collision)."""
    path = where / "torch_tpu-2.11.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("torch_tpu/__init__.py", "")
        whl.writestr("torch_tpu-2.11.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: torch-tpu\n"
                     "Version: 2.11.0\nHome-page: https://github.com/google-pytorch/torch_tpu\n"
                     "Requires-Python: >=3.11\n")
        whl.writestr("torch_tpu-2.11.0.dist-info/WHEEL",
                     "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("torch_tpu-2.11.0.dist-info/RECORD", "")
    return path


def test_google_torch_tpu_is_refused(bootstrapped, capsys, tmp_path):
    home, _ = bootstrapped
    wheel = google_wheel(tmp_path)
    capsys.readouterr()
    assert sd_env(home, "install", "--torch-tpu-wheel", str(wheel)) == 2
    assert "Google's torch-tpu 2.11.0, not Sophgo's" in capsys.readouterr().err
    pip(home, "install", "--no-deps", "--ignore-requires-python", str(wheel))
    try:
        code, doc = verify_json(home, capsys, "--quick")
        assert code == 1 and "Google's torch-tpu 2.11.0 is installed" in by_name(doc)["torch_tpu"]["detail"]
        assert sd_env(home, "install") == 1
        assert "pip uninstall -y torch-tpu" in capsys.readouterr().err
    finally:
        pip(home, "uninstall", "-y", "torch-tpu")
    assert verify_json(home, capsys, "--quick")[0] == 0


@pytest.mark.parametrize(("body", "problem"), [
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "crashed with SIGSEGV"),
    ("import time\ntime.sleep(600)\n", "timed out after 20 s"),
])
def test_torch_tpu_that_crashes_or_hangs_is_a_failed_check(bootstrapped, tmp_path, monkeypatch, body, problem):
    home, _ = bootstrapped
    fake = tmp_path / "torch_tpu"
    fake.mkdir()
    (fake / "__init__.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the probe's interpreter imports this torch_tpu
    man = load(ROOT / "manifests" / "sc7-sd14-lora.toml")
    ctx = Context(man, Paths(home), Runner(), home / "venv" / "bin" / "python", quick=True)
    ctx.timeouts["device"] = 20  # import torch alone takes about 4 s cold
    checks = {c.name: c for c in verify.run(ctx)}
    assert checks["torch_tpu"].status == "fail" and problem in checks["torch_tpu"].detail
    assert checks["linear smoke"].device == "cpu"  # the rest still ran, on the CPU


def test_local_model_and_dataset_folders(bootstrapped, capsys, tmp_path):
    """--model and --data: a model folder and an imagefolder of the user's (here: copies of the
    tiny ones, the data with other file names and captions), with the Hub unreachable."""
    home, _ = bootstrapped
    cache = home / "cache" / "tiny-sd"
    if not (cache / "model").is_dir():
        assert verify_json(home, capsys)[0] == 0  # builds the tiny model
    data = tmp_path / "my-captions"
    data.mkdir()
    lines = []
    for i, png in enumerate(sorted((cache / "data").glob("*.png"))):
        (data / f"{i}.png").write_bytes(png.read_bytes())
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"shape number {i}"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    code, doc = verify_json(home, capsys, "--model", str(cache / "model"), "--data", str(data))
    step = by_name(doc)["lora step"]
    assert code == 0 and step["status"] == "ok", step
    assert f"model {cache / 'model'}, data {data}" in step["detail"]
    assert by_name(doc)["inference"]["status"] == "ok"
