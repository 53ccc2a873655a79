"""A CPU-backed emulation of Sophgo's torch_tpu plugin (torch 2.1 era).

Importing it registers the "tpu" device the way the real plugin does, so
code written for the card runs unchanged; the memory is host memory and the
kernels are the CPU's. sd-env puts it on the path only for the runs that ask
for it (`sd-env emulate`, `sd-env verify --emulate`), never installs it.
"""

import torch

from torch_tpu import _C, tpu  # noqa: F401  (_C loads the device's kernels)

EMULATED = True  # the real plugin has no such attribute
__version__ = "2.1.0.post1+emulated"

torch.utils.rename_privateuse1_backend("tpu")
torch._register_device_module("tpu", tpu)
torch.utils.generate_methods_for_privateuse1_backend(for_tensor=True, for_module=True, for_storage=True)

__all__ = ["EMULATED", "tpu"]
