"""The "sccl" process group for "tpu" tensors: `dist.init_process_group(backend="sccl")`.

As in Sophgo's plugin, importing torch_tpu makes the backend known to torch.distributed;
its collectives run gloo on zero-copy CPU views of the emulated device memory
(csrc/sccl.cpp) and refuse int64 device tensors like the real backend.
"""

from __future__ import annotations

import torch.distributed as dist

from torch_tpu import _C

NAME = "sccl"


def _create(store, rank: int, size: int, timeout):
    return _C.process_group_sccl(dist.ProcessGroupGloo(store, rank, size, timeout), rank, size)


def register() -> None:
    if not dist.is_available() or NAME.upper() in getattr(dist.Backend, "_plugins", {}):
        return
    dist.Backend.register_backend(NAME, _create, devices=["cpu", "tpu"])
