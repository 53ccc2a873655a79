"""A wheel install of sd-env (as a bundle's bootstrap.sh makes one) carries the shipped stacks.

sd-env's wheel is built as `bundle create` builds it (pip wheel from shipped.source_copy), installed
into a fresh venv, and run from a folder outside the checkout: `sd-env stacks` lists every stack
of manifests/, `-m NAME` resolves to the installed copy, its locks and patches are there, and the
default manifest is found with no -m.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sd_env.system import shipped
from tests.conftest import ROOT

pytestmark = pytest.mark.network  # uv takes sd-env's few dependencies from PyPI (or its cache)

# The venv's sd-env reads the stacks it lists and the patches and locks each names.
LISTED = """
import json, sys
from sd_env.core import manifest, stacks
out = []
for man in stacks.shipped():
    files = [p for c in man.components for p in c.patches] + ([man.lock.requirements, *man.lock.files.values()]
                                                             if man.lock else [])
    out.append({"name": man.name, "path": str(man.path), "missing": [str(p) for p in files if not p.is_file()]})
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's sd-env, the wheel): a real wheel in a real venv."""
    root = tmp_path_factory.mktemp("wheel-install")
    src = shipped.source_copy(root / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps",
                    "-w", str(root / "dist"), str(src)], check=True, timeout=600)
    wheel = next((root / "dist").glob("sd_env-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)],
                   check=True, timeout=600)
    return venv, wheel


def run(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SD_ENV_HOME", "SD_ENV_MANIFEST")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_carries_manifests_locks_and_patches(installed):
    _venv, wheel = installed
    with zipfile.ZipFile(wheel) as whl:
        data = {n.split("/share/sd-env/", 1)[1] for n in whl.namelist() if "/share/sd-env/" in n}
    checkout = {f"{d}/{p.name}" for d in ("manifests", "patches") for p in (ROOT / d).iterdir() if p.is_file()}
    assert data == checkout


def test_installed_sd_env_lists_every_shipped_stack(installed, tmp_path):
    venv, _ = installed
    got = run(venv, tmp_path, str(venv / "bin" / "sd-env"), "stacks", "--json")
    assert got.returncode == 0, got.stderr
    listed = json.loads(got.stdout)["stacks"]
    assert sorted(s["name"] for s in listed) == sorted(p.stem for p in (ROOT / "manifests").glob("*.toml"))
    share = (venv / "share" / "sd-env" / "manifests").resolve()
    assert all(Path(s["path"]).parent == share for s in listed), listed
    # Every lock and patch a stack names is there: patches_dir = "../patches" resolves in the copy.
    read = run(venv, tmp_path, str(venv / "bin" / "python"), "-c", LISTED)
    assert read.returncode == 0, read.stderr
    assert {s["name"]: s["missing"] for s in json.loads(read.stdout)} == {s["name"]: [] for s in listed}


@pytest.mark.parametrize("name", ["sc7-sd15-lora", "sc7-sd14-lora-py310"])
def test_installed_sd_env_resolves_a_stack_by_name(installed, tmp_path, name):
    venv, _ = installed
    got = run(venv, tmp_path, str(venv / "bin" / "sd-env"), "status", "-m", name, "--home", str(tmp_path / "h"),
              "--json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert doc["home"] == str(tmp_path / "h")
    shipped_patches = {p.name for p in (ROOT / "patches").iterdir()}
    named = [n for c in doc["components"] for n in c.get("patches") or {}]
    assert named and set(named) <= shipped_patches, doc["components"]


def test_installed_sd_env_finds_the_default_stack_and_homes_in_the_current_folder(installed, tmp_path):
    """No -m: the default manifest from the installed copy; its home is .sd-env here, not in the venv."""
    venv, _ = installed
    got = run(venv, tmp_path, str(venv / "bin" / "sd-env"), "status", "--json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    assert doc["home"] == str(tmp_path.resolve() / ".sd-env")
    assert [c["name"] for c in doc["components"]] == ["accelerate", "diffusers", "transformers"]
    assert not list(venv.rglob(".sd-env")), "a home inside sd-env's own venv"
