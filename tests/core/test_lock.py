"""The era lock: parsing, what is missing, the compile command, and hash-checked installs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from sd_env.core import lockfile, manifest
from sd_env.errors import InputError, StepError
from sd_env.system import tools
from sd_env.system.runner import Runner
from sd_env.target import closure
from sd_env.target.envs import Inventory
from tests.conftest import ROOT

MANIFEST = manifest.load(ROOT / "manifests" / "sc7-sd14-lora.toml")
BAD = "a" * 64


def test_the_committed_lock_pins_the_era():
    lock = lockfile.read(MANIFEST.lock.files["pypi"])
    assert len(lock.pins) == 87
    assert lock.pins["torch"] == "2.1.0" and lock.pins["numpy"] == "1.25.2"
    assert lock.pins["huggingface-hub"] == "0.16.4" and lock.pins["setuptools"] == "68.1.2"
    assert all(lock.hashes[name] for name in lock.pins)
    # the patched components come from their checkouts, never from the lock
    assert not {"accelerate", "diffusers", "transformers", "torch-tpu"} & set(lock.pins)


def test_a_pin_without_hash_is_refused(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text(f"six==1.16.0 \\\n    --hash=sha256:{BAD}\nnumpy==1.25.2\n")
    with pytest.raises(InputError, match="no sha256 for numpy"):
        lockfile.read(path)


def test_missing_lists_absent_wrong_and_duplicate_pins(tmp_path):
    path = tmp_path / "lock.txt"
    path.write_text("".join(f"{p} \\\n    --hash=sha256:{BAD}\n" for p in ("Six==1.16.0", "numpy==1.25.2",
                                                                         "rich==13.5.2", "tqdm==4.66.1")))
    inv = Inventory((3, 9, 18), "python", "/venv", True, {
        "six": [{"version": "1.16.0", "path": "a"}],
        "numpy": [{"version": "2.0.0", "path": "a"}],
        "tqdm": [{"version": "4.66.1", "path": "a"}, {"version": "4.66.1", "path": "b"}],
    })
    assert closure.missing(lockfile.read(path), inv) == {
        "numpy": ("1.25.2", "2.0.0"), "rich": ("13.5.2", None), "tqdm": ("4.66.1", "4.66.1, 4.66.1")}


def test_compile_command_reproduces_the_era_settings():
    argv = lockfile.compile_argv(MANIFEST, "pypi", "uv", Path("out.txt"))
    joined = " ".join(argv)
    assert "--python-version 3.9 --python-platform x86_64-unknown-linux-gnu" in joined
    assert "--exclude-newer 2023-08-31T00:00:00Z" in joined and "--generate-hashes" in joined
    assert "--exclude-newer-package torch=2023-10-06T00:00:00Z" in joined
    for comp in ("accelerate", "diffusers", "transformers"):
        assert f"--no-emit-package {comp}" in joined
    assert "--index-url https://pypi.org/simple" in joined and "--extra-index-url" not in joined
    cpu = " ".join(lockfile.compile_argv(MANIFEST, "cpu", "uv", Path("out.txt")))
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in cpu


@pytest.fixture
def offline_wheel(tmp_path, monkeypatch):
    """A local wheel folder as the only index, for pip and uv alike."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "six==1.16.0", "-d", str(wheels)],
                   check=True)
    for var, value in (("PIP_NO_INDEX", "1"), ("PIP_FIND_LINKS", str(wheels)), ("UV_NO_INDEX", "1"),
                       ("UV_FIND_LINKS", str(wheels))):
        monkeypatch.setenv(var, value)
    where = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, symlinks=True).create(where)
    return where / "bin" / "python"


SIX = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"  # six-1.16.0-py2.py3-none-any.whl


@pytest.fixture(params=[False, True], ids=["pip", "uv"])
def use_uv(request) -> bool:
    # uv is a test dependency: its absence is a broken test setup, not a reason to skip
    assert not request.param or tools.find_uv() is not None, "uv missing: pip install -e '.[test]'"
    return request.param


def install_six(tmp_path: Path, python: Path, digest: str, use_uv: bool) -> str:
    lock_path = tmp_path / "lock.txt"
    lock_path.write_text(f"six==1.16.0 \\\n    --hash=sha256:{digest}\n")
    return closure.install(Runner(), python, lockfile.read(lock_path), index=None, use_uv=use_uv)


@pytest.mark.network
def test_hash_mismatch_names_package_and_both_hashes(tmp_path, offline_wheel, use_uv):
    with pytest.raises(StepError) as info:
        install_six(tmp_path, offline_wheel, BAD, use_uv)
    message = info.value.message
    assert "hash mismatch for six==1.16.0" in message
    assert f"expects sha256 {BAD}" in message and f"the downloaded file has {SIX}" in message


@pytest.mark.network
def test_matching_hash_installs(tmp_path, offline_wheel, use_uv):
    assert install_six(tmp_path, offline_wheel, SIX, use_uv) == ("uv" if use_uv else "pip")
    subprocess.run([str(offline_wheel), "-c", "import six"], check=True)


@pytest.mark.network
def test_lock_finds_uv_beside_its_interpreter_when_path_has_none(tmp_path, offline_wheel):
    """As from bootstrap's tool venv, not activated: uv is in its bin/, not on PATH."""
    tool = tmp_path / "tool"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(tool)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site, here = (subprocess.run([python, "-c", purelib], check=True, capture_output=True, text=True).stdout.strip()
                  for python in (str(tool / "bin" / "python"), sys.executable))
    Path(site, "sd_env_under_test.pth").write_text(f"import site; site.addsitedir({here!r})\n")
    (tool / "bin" / "uv").symlink_to(tools.find_uv())
    project = tmp_path / "project"
    (project / "manifests").mkdir(parents=True)
    (project / "manifests" / "requirements.in").write_text("six\n")
    manifest_path = project / "manifests" / "m.toml"
    manifest_path.write_text('schema = 1\nname = "m"\npython = "3.9"\ndevice = "tpu:0"\n'
                             '[torch]\nrequirements = ["torch==2.1.0"]\nindex = "https://pypi.org/simple"\n'
                             '[lock]\nrequirements = "requirements.in"\nexclude_newer = "2023-08-31T00:00:00Z"\n'
                             'files = { pypi = "m.pypi.lock.txt" }\n[[component]]\nname = "tinypkg"\n'
                             'git = "https://github.com/example/tinypkg.git"\ntag = "v1.0"\nversion = "1.0"\n')
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    got = subprocess.run([str(tool / "bin" / "python"), "-m", "sd_env", "lock", "--json", "-m", str(manifest_path)],
                         env=env, capture_output=True, text=True, timeout=300)
    doc = json.loads(got.stdout)
    assert got.returncode == 0 and doc["exit_code"] == 0, got.stdout + got.stderr
    assert "1 packages, all hashed" in doc["results"][0]["detail"]
    assert lockfile.read(project / "manifests" / "m.pypi.lock.txt").pins == {"six": "1.16.0"}


def test_a_new_flavour_is_listed_in_the_manifest(tmp_path):
    """`sd-env lock --flavour cpu` writes a lock install reads: the manifest's [lock.files] lists it."""
    from sd_env.core import manifest_edit

    man = tmp_path / "sc7.toml"
    text = (ROOT / "manifests" / "sc7-sd14-lora.toml").read_text()
    man.write_text(text.replace('"sc7-sd14-lora.', '"' + str(ROOT / "manifests" / "sc7-sd14-lora.")).replace(
        'requirements = "', f'requirements = "{ROOT / "manifests"}/', 1).replace(
        'patches_dir = "../patches"', f'patches_dir = "{ROOT / "patches"}"') + "# last line\n")
    before = manifest.load(man)
    assert "cpu" not in before.lock.files
    manifest_edit.add_lock_file(man, "cpu", tmp_path / "sc7.cpu.lock.txt")
    after = manifest.load(man)
    assert after.lock.files["cpu"] == tmp_path / "sc7.cpu.lock.txt"
    assert lockfile.flavour_order(after) == ["cpu", "pypi"]  # install now reads it first
    assert man.read_text().endswith("# last line\n") and man.read_text().count("#") == text.count("#") + 1
