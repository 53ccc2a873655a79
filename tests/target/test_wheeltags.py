"""A torch_tpu wheel that does not fit the stack is refused before anything is installed, naming the
shipped stack it fits. The wheels are small zips built here with a proper name, METADATA and WHEEL."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core import stacks
from sd_env.errors import InputError
from sd_env.target import wheeltags
from tests.conftest import ROOT, run_in

SOPHGO = "Home-page: https://github.com/sophgo/torch-tpu\nAuthor: Sophgo\n"
GOOGLE = "Home-page: https://github.com/google-pytorch/torch_tpu\nRequires-Python: >=3.11\n"


def wheel(where: Path, version: str, tag: str, meta: str = SOPHGO, requires: tuple[str, ...] = ()) -> Path:
    path = where / f"torch_tpu-{version}-{tag}.whl"
    info = f"torch_tpu-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("torch_tpu/__init__.py", "")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch-tpu\nVersion: {version}\n{meta}"
                     + "".join(f"Requires-Dist: {r}\n" for r in requires))
        whl.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
        whl.writestr(f"{info}/RECORD", "")
    return path


def shipped(name: str):
    return next(m for m in stacks.shipped() if m.name == name)


@pytest.mark.parametrize(("version", "tag", "requires", "problem", "fits"), [
    ("2.1.0.post1", "cp310-cp310-linux_x86_64", (), "built for cp310, the stack is Python 3.9",
     "sc7-sd14-lora-py310"),
    ("2.8.0.post1", "cp311-cp311-linux_x86_64", (), "torch_tpu 2.8.0.post1 goes with torch 2.8, the stack pins torch "
     "2.1.0", "sc7-sd15-lora"),
    ("2.1.0.post1", "cp311-cp311-linux_x86_64", ("torch==2.8.0",), "it requires torch==2.8.0, the stack pins torch "
     "2.1.0", "sc7-sd15-lora"),
    ("2.8.0.post1", "cp39-cp39-linux_x86_64", (), "goes with torch 2.8", None),
    ("2.1.0.post1", "cp39-cp39-linux_aarch64", (), "built for linux_aarch64, the stack is x86_64", None),
])
def test_misfit_names_the_fitting_stack(tmp_path, version, tag, requires, problem, fits):
    path = wheel(tmp_path, version, tag, requires=requires)
    with pytest.raises(InputError) as got:
        wheeltags.check_fit(shipped("sc7-sd14-lora"), path)
    assert problem in got.value.message and "nothing was installed" in got.value.message
    if fits:
        assert got.value.hint.startswith(f"use the stack made for it: -m {fits}")
    else:
        assert got.value.hint.startswith("no shipped stack fits it")


@pytest.mark.parametrize(("name", "version", "tag"), [
    ("sc7-sd14-lora", "2.1.0.post1", "cp39-cp39-linux_x86_64"),
    ("sc7-sd14-lora-py310", "2.1.0.post1", "cp310-cp310-linux_x86_64"),
    ("sc7-sd15-lora", "2.8.0.post1", "cp311-cp311-linux_x86_64"),
])
def test_each_shipped_stack_takes_its_own_wheel(tmp_path, name, version, tag):
    man = shipped(name)
    assert man.torch_tpu is not None and man.torch_tpu.location.endswith(f"torch_tpu-{version}-{tag}.whl")
    wheeltags.check_fit(man, wheel(tmp_path, version, tag))  # no error


def site_listing(python: Path) -> list[str]:
    site = Path(run_in(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    return sorted(p.name for p in site.iterdir())


@pytest.mark.parametrize(("version", "tag", "meta", "says", "hint"), [
    ("2.1.0.post1", "cp310-cp310-linux_x86_64", SOPHGO, "built for cp310", "-m sc7-sd14-lora-py310"),
    ("2.8.0.post1", "cp311-cp311-linux_x86_64", SOPHGO, "goes with torch 2.8", "-m sc7-sd15-lora"),
    ("2.11.0", "py3-none-any", GOOGLE, "Google's torch-tpu 2.11.0, not Sophgo's", "Google's TorchTPU"),
])
def test_install_refuses_before_installing_anything(tmp_path, fresh_target, capsys, version, tag, meta, says, hint):
    path = wheel(tmp_path, version, tag, meta)
    home = tmp_path / "home"
    before = site_listing(fresh_target)
    capsys.readouterr()
    code = main(["install", "-m", "sc7-sd14-lora", "--home", str(home), "--python", str(fresh_target),
                 "--torch-tpu-wheel", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"error: {path.name} does not fit the stack sc7-sd14-lora" in err and says in err
    assert hint in err
    assert site_listing(fresh_target) == before, "nothing installed into the target"
    assert not (home / "src").exists(), "nothing fetched"


def test_shipped_manifests_all_load_with_a_description():
    names = [m.name for m in stacks.shipped()]
    assert {"sc7-sd14-lora", "sc7-sd14-lora-py310", "sc7-sd15-lora"} <= set(names)
    for man in stacks.shipped():
        assert man.description, f"{man.path}: no description"
        assert man.path.parent == ROOT / "manifests"
