"""core/names.py answers as packaging does, in the cases it answers at all (the rest go to packaging)."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sd_env.core.names import PIN, RELEASE, canonical


@pytest.mark.parametrize("name", ["Torch_TPU", "torch-tpu", "oslo.concurrency", "A__b--C..d", "x", "a-_.b"])
def test_canonical_is_packagings_rule(name):
    assert canonical(name) == canonicalize_name(name)


@pytest.mark.parametrize("pin", ["torch==2.1.0", "torch_tpu==2.1.0.post1", "torch==2.1.0+cpu", "a==1",
                                 "torchvision==0.16.0+cu118.x1"])
def test_a_pin_taken_without_packaging_is_one_packaging_takes(pin):
    assert PIN.fullmatch(pin)
    specs = list(Requirement(pin).specifier)
    assert len(specs) == 1 and specs[0].operator == "==" and str(Version(specs[0].version)) == pin.split("==")[1]


@pytest.mark.parametrize("text", ["torch>=2.1", "torch == 2.1.0", "torch==2.1.0rc1", "torch==2.1.*", "-x==1",
                                  "torch==v2", "torch[cpu]==2.1.0"])
def test_anything_else_is_left_to_packaging(text):
    assert not PIN.fullmatch(text)  # manifest.py then asks packaging, which decides as before


@pytest.mark.parametrize("version", ["0.16.0", "2.1.0.post1", "2.1.0+cpu", "1"])
def test_a_release_taken_without_packaging_is_a_version(version):
    assert RELEASE.fullmatch(version) and str(Version(version)) == version
