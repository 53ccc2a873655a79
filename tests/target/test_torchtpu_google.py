"""Google's PyPI torch-tpu against Sophgo's torch_tpu, told apart by who made the wheel, not by its Python range.

The metadata below is what the wheels really say: Google's torch_tpu-0.2.0-cp311 on PyPI (its METADATA,
read with HTTP range requests, 2026-12) and its 0.0.0 placeholder; Sophgo's from the setup() of
github.com/sophgo/torch-tpu (author "sophgo", dev@sophgo.com, "TPU bridge for PyTorch", >=3.8).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sd_env.core import stacks
from sd_env.core.manifest import WheelSpec
from sd_env.errors import InputError
from sd_env.system.runner import Runner
from sd_env.target import envs, torchtpu, wheeltags
from tests.kit.faultkit import make_wheel

GOOGLE_020 = ("Author: torch team\nHome-page: https://github.com/google-pytorch/torch_tpu\nLicense: Apache 2.0\n"
              "Summary: TPU/XLA support for PyTorch\nRequires-Python: >=3.11\nRequires-Dist: numpy>=2\n"
              "Requires-Dist: libtpu>=0.0.50\nRequires-Dist: torch>=2.11.0,<=2.15.0\n")
GOOGLE_PLACEHOLDER = "Summary: Placeholder\n"
SOPHGO = ("Summary: TPU bridge for PyTorch\nHome-page: https://github.com/sophgo/torch-tpu\nAuthor: sophgo\n"
          "Author-email: dev@sophgo.com\n")
SD15_TAG = "cp311-cp311-linux_x86_64"


def sd15():
    return next(m for m in stacks.shipped() if m.name == "sc7-sd15-lora")


@pytest.mark.parametrize(("version", "tag", "metadata"), [
    ("0.2.0", "cp311-cp311-manylinux_2_31_x86_64", GOOGLE_020),
    ("0.0.0", "py2.py3-none-any", GOOGLE_PLACEHOLDER),
    # Google's runtime dependency alone gives it away, whatever the version says.
    ("2.11.0", "cp311-cp311-manylinux_2_31_x86_64", "Requires-Dist: libtpu>=0.0.50\n"),
], ids=["0.2.0", "placeholder", "libtpu"])
def test_google_wheel_is_refused(tmp_path, version, tag, metadata):
    wheel = make_wheel(tmp_path, "torch_tpu", version, tag=tag, metadata=metadata)
    assert torchtpu.is_google(torchtpu.wheel_metadata(wheel))
    with pytest.raises(InputError, match=f"Google's torch-tpu {version}, not Sophgo's"):
        torchtpu.check_wheel(WheelSpec(str(wheel), None), wheel)
    with pytest.raises(InputError, match="Google's torch-tpu") as refused:
        wheeltags.check_fit(sd15(), wheel)
    assert "Google's TorchTPU" in refused.value.hint


@pytest.mark.parametrize("metadata", [
    SOPHGO + "Requires-Python: >=3.10\n",
    # A wheel with no maker named: its torch-shaped version is Sophgo's numbering.
    "Requires-Python: >=3.10\n",
    "Requires-Python: >=3.11\n",
], ids=["sophgo", "bare-3.10", "bare-3.11"])
def test_sophgo_wheel_for_a_newer_python_is_taken(tmp_path, metadata):
    wheel = make_wheel(tmp_path, "torch_tpu", "2.8.0.post1", tag=SD15_TAG, metadata=metadata)
    assert not torchtpu.is_google(torchtpu.wheel_metadata(wheel))
    torchtpu.check_wheel(WheelSpec(str(wheel), None), wheel)
    wheeltags.check_fit(sd15(), wheel)  # fits the stack made for it: no Google refusal


def test_sophgo_mark_wins_over_a_google_looking_range(tmp_path):
    """Sophgo's name in the metadata is decisive even with a 0.x version and Requires-Python >= 3.11."""
    wheel = make_wheel(tmp_path, "torch_tpu", "0.1.0", tag=SD15_TAG, metadata=SOPHGO + "Requires-Python: >=3.11\n")
    assert not torchtpu.is_google(torchtpu.wheel_metadata(wheel))


@pytest.mark.parametrize(("metadata", "google"), [(GOOGLE_020, True), (SOPHGO + "Requires-Python: >=3.10\n", False)],
                         ids=["google", "sophgo"])
def test_installed_copy_is_judged_the_same(tmp_path, metadata, google):
    """The inventory probe reads the same fields from an installed copy (a real venv, the wheel unpacked
    into its site-packages as an installer does for a purelib wheel)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    version = "0.2.0" if google else "2.8.0.post1"
    with zipfile.ZipFile(make_wheel(tmp_path / "w", "torch_tpu", version, tag=SD15_TAG, metadata=metadata)) as whl:
        whl.extractall(site)
    found = torchtpu.installed_google(envs.inventory(Runner(), python))
    assert (found is not None) == google
    if google:
        assert found["version"] == "0.2.0" and "google" in found["home_page"]
