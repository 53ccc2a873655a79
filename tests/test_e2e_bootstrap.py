"""./bootstrap.sh end to end: the default manifest into a fresh Python 3.9 environment.

Downloads the locked closure (2.8 GB, PyPI's CUDA build of torch 2.1.0) on a
cold machine. accelerate and diffusers come from git through the shared mirrors
when they are there (SD_ENV_GIT_MIRROR, see conftest.bootstrap); other git
sources fall back to PyPI sdists where GitHub is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from sd_env.core import lockfile, manifest
from tests.conftest import ROOT, bootstrap, shared_mirrors

pytestmark = [pytest.mark.slow, pytest.mark.network]

MANIFEST = manifest.load(ROOT / "manifests" / "sc7-sd14-lora.toml")


def target_run(home: Path, code: str) -> str:
    python = home / "venv" / "bin" / "python"
    return subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout.strip()


def test_environment_has_the_pinned_stack(bootstrapped):
    home, _ = bootstrapped
    versions = json.loads(target_run(home, (
        "import json, sys, torch, diffusers, transformers, accelerate, numpy, huggingface_hub\n"
        "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'torch': torch.__version__,"
        " 'diffusers': diffusers.__version__, 'transformers': transformers.__version__,"
        " 'accelerate': accelerate.__version__, 'numpy': numpy.__version__,"
        " 'huggingface_hub': huggingface_hub.__version__}))")))
    assert versions["python"] == MANIFEST.python
    assert versions["torch"].split("+")[0] == "2.1.0"
    for comp in MANIFEST.components:
        assert versions[comp.name] == comp.version
    lock = lockfile.read(MANIFEST.lock.files["pypi"])
    assert versions["numpy"] == lock.pins["numpy"] and versions["huggingface_hub"] == lock.pins["huggingface-hub"]


def test_pip_check_is_clean(bootstrapped):
    home, _ = bootstrapped
    out = subprocess.run([str(home / "venv" / "bin" / "python"), "-m", "pip", "check"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_editable_installs_point_at_the_patched_checkouts(bootstrapped):
    home, _ = bootstrapped
    for comp in MANIFEST.components:
        where = target_run(home, f"import {comp.name}; print({comp.name}.__file__)")
        assert where.startswith(str(home / "src" / comp.name)), where
    accelerator = target_run(home, "import accelerate.accelerator as a; print(open(a.__file__).read())")
    assert "torch_tpu.tpu.amp.GradScaler(**kwargs)" in accelerator
    assert 'self.device.type == "tpu"' in accelerator


def test_first_run_reports_what_it_did(bootstrapped):
    _, first = bootstrapped
    assert "installed 87 packages with uv" in first.stdout  # a fresh venv: the whole lock, by uv
    assert "applied accelerate-0.16.0-tpu.diff" in first.stdout
    assert "CPU-only" in first.stdout  # no Sophgo wheel here, and it says so
    # ... and it ends with a full verify whose real-work rows passed on the CPU and say so
    for row in ("linear smoke", "lora step", "inference"):
        # bootstrap's stdout is a pipe here: plain rows, cells separated by " | ", never cut
        line = next(line for line in first.stdout.splitlines() if line.startswith(f"{row} | "))
        assert line.startswith(f"{row} | ok | ") and "ran on cpu (no SC7 card)" in line, line
    # Without a card the torch_tpu row is skipped: said, never "all checks passed".
    assert "no check failed, but not everything was checked: not checked: torch_tpu (no SC7 card here) (log: " \
        in first.stdout


def test_the_target_python_came_from_the_standalone_mirror(bootstrapped, standalone_mirror):
    """bootstrap ran on a PATH with no python3.9 (conftest.bootstrap): sd-env's venv used the system's
    python3, and `sd-env install` had uv put the mirror's CPython 3.9 under the home."""
    home, first = bootstrapped
    version = standalone_mirror.versions()[MANIFEST.python]
    base = home / "python" / f"cpython-{version}-linux-{os.uname().machine}-gnu"
    assert f"home = {base / 'bin'}" in (home / "venv" / "pyvenv.cfg").read_text()
    assert f"installing a standalone CPython {MANIFEST.python} with uv into {home / 'python'}" in first.stderr
    assert f"Python {MANIFEST.python} is {base / 'bin' / f'python{MANIFEST.python}'}" in first.stderr
    # the very interpreter the mirror's archive holds (tests/kit/pythonkit.py rewrote its RUNPATH: no other has it)
    archive = next(standalone_mirror.root.glob(f"*/cpython-{version}+*.tar.gz"))
    with tarfile.open(archive) as tar:
        packed = tar.extractfile(f"python/bin/python{MANIFEST.python}")
        assert packed is not None and packed.read() == (base / "bin" / f"python{MANIFEST.python}").read_bytes()


def test_mirrored_components_came_from_git(bootstrapped):
    if shared_mirrors() is None:
        pytest.skip("skipped: no shared/mirrors beside the repository, every component took its sdist")
    home, _ = bootstrapped
    record = json.loads((home / "state.json").read_text())["components"]
    assert record["accelerate"]["source"] == "git" and record["diffusers"]["source"] == "git", record
    assert record["transformers"]["source"] == "sdist"  # not mirrored: the fallback still works
    assert (home / "src" / "diffusers" / "examples" / "text_to_image" / "train_text_to_image_lora.py").is_file()


def test_second_run_is_a_no_op(bootstrapped):
    home, _ = bootstrapped
    before = set((home / "logs").glob("*-install.log"))
    second = bootstrap(home)
    assert second.returncode == 0, second.stderr
    assert "installing sd-env" not in second.stderr  # the tool venv was reused
    (log,) = set((home / "logs").glob("*-install.log")) - before
    commands = [line for line in log.read_text().splitlines() if line.startswith("$ ")]
    assert not [c for c in commands if " install " in c or " fetch " in c or " download " in c], commands
    assert "all 87 locked packages present" in second.stdout
    assert second.stdout.count("up to date") == len(MANIFEST.components)
    assert "running verify --quick" in second.stderr
    assert ("not checked: torch_tpu (no SC7 card here), lora step (--quick), inference (--quick) (log: "
            in second.stdout)
