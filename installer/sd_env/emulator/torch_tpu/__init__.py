"""A CPU-backed emulation of Sophgo's torch_tpu plugin (torch 2.1 and torch 2.8 eras).

Importing it registers the "tpu" device the way the real plugin does, so
code written for the card runs unchanged; the memory is host memory (counted
per device, see torch_tpu.emulator) and the kernels are the CPU's. sd-env puts
it on the path only for the runs that ask for it (`sd-env emulate`, `sd-env
verify --emulate`), never installs it.
"""

import os

import torch

from torch_tpu import _C, _era, _profile, _sccl, emulator, tpu  # noqa: F401  (_C loads the device's kernels)

EMULATED = True  # the real plugin has no such attribute
__version__ = _era.VERSION

if _era.TORCH_28:
    # The 2.8-era plugin's default (its __init__.py); its out-of-memory message names it.
    os.environ.setdefault("TPU_ALLOCATOR_FREE_DELAY_IN_MS", "99999")

torch.utils.rename_privateuse1_backend("tpu")
torch._register_device_module("tpu", tpu)
torch.utils.generate_methods_for_privateuse1_backend(for_tensor=True, for_module=True, for_storage=True,
                                                     unsupported_dtype=_profile.storage_dtypes_refused())
emulator.configure()
_sccl.register()  # the "sccl" c10d backend (torch_tpu/_sccl.py)

__all__ = ["EMULATED", "emulator", "tpu"]
