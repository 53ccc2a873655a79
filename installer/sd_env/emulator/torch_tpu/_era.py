"""Which torch_tpu era this build emulates, from the torch it was compiled against.

The one place the Python side asks: torch 2.1 is torch_tpu 2.1.0.post1 (the
tutorial's plugin), torch 2.8 is torch_tpu 2.8.0.post1 (Sophgo's current one).
What differs in C++ is in csrc/compat.h.
"""

from torch_tpu import _C

TORCH = _C.torch_era()  # "2.1" or "2.8"
TORCH_28 = TORCH == "2.8"
VERSION = f"{TORCH}.0.post1+emulated"
