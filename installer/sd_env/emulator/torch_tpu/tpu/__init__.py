"""torch.tpu / torch_tpu.tpu: devices, random numbers and autocast state.

What each era's plugin exports: the 2.1-era package has devices, amp and the
autocast functions (and synchronize, which the emulator always had); the
2.8-era one adds the RNG functions' *_all forms, get_device_properties /
get_device_name and the CUDA-style memory functions (tpu/memory.py), which
are exported only when the emulator is built for torch 2.8, so that code
calling them on a 2.1 card fails here too.
"""

from __future__ import annotations

import torch

from torch_tpu import _C, _era
from torch_tpu.tpu import amp
from torch_tpu.tpu.random import (
    _index,
    default_generators,
    get_rng_state,
    initial_seed,
    manual_seed,
    manual_seed_all,
    seed,
    seed_all,
    set_rng_state,
)

_initialized = False


def init() -> None:
    global _initialized
    _initialized = True


def is_initialized() -> bool:
    return _initialized


def _is_in_bad_fork() -> bool:
    return False  # no driver state to lose in a forked child


def device_count() -> int:
    """$SG_MAX_DEVICE_COUNT devices (default 1), as the real plugin reads it."""
    return _C.device_count()


def is_available() -> bool:
    return device_count() > 0


def current_device() -> int:
    return _C.current_device()


def set_device(device: torch.device | str | int) -> None:
    index = _index(device)
    if index >= 0:
        _C.set_device(index)


class device:
    """Context manager that makes `device` current, like torch.cuda.device."""

    def __init__(self, device: torch.device | str | int | None) -> None:
        self.index = _index(device)
        self.previous = -1

    def __enter__(self) -> None:
        self.previous = current_device()
        set_device(self.index)

    def __exit__(self, *exc: object) -> None:
        set_device(self.previous)


def synchronize(device: torch.device | str | int | None = None) -> None:
    """Kernels run synchronously on the host: nothing to wait for."""


def is_autocast_enabled() -> bool:
    return _C.is_autocast_enabled()


def set_autocast_enabled(enabled: bool) -> None:
    _C.set_autocast_enabled(bool(enabled))


def get_autocast_dtype() -> torch.dtype:
    return getattr(torch, _C.get_autocast_dtype())


def set_autocast_dtype(dtype: torch.dtype) -> None:
    _C.set_autocast_dtype(str(dtype))


def get_amp_supported_dtype() -> list[torch.dtype]:
    return [torch.float16, torch.bfloat16]


class _TPUDeviceProperties:
    """What the 2.8-era get_device_properties returns: a name and total_memory (0 on the real
    plugin, whose query is commented out; here the emulated capacity, else 0)."""

    def __init__(self, name: str, total_memory: int) -> None:
        self.name, self.total_memory = name, total_memory

    def __repr__(self) -> str:
        return f"_TPUDeviceProperties(name='{self.name}', total_memory={self.total_memory / 2**20}MB)"


def _get_device_properties(device: torch.device | str | int | None = None) -> _TPUDeviceProperties:
    index = _index(device)
    if index < 0 or index >= device_count():
        raise AssertionError("Invalid device id")
    return _TPUDeviceProperties("BM1684X (emulated)", _C.memory_stats(index)["capacity"])


def _get_device_name(device: torch.device | str | int | None = None) -> str:
    return _get_device_properties(device).name


__all__ = [
    "amp", "current_device", "default_generators", "device", "device_count", "get_amp_supported_dtype",
    "get_autocast_dtype", "get_rng_state", "init", "initial_seed", "is_autocast_enabled", "is_available",
    "is_initialized", "manual_seed", "manual_seed_all", "seed", "seed_all", "set_autocast_dtype",
    "set_autocast_enabled", "set_device", "set_rng_state", "synchronize",
]

if _era.TORCH_28:
    from torch_tpu.tpu import memory
    from torch_tpu.tpu.memory import *  # noqa: F403
    from torch_tpu.tpu.random import get_rng_state_all, set_rng_state_all

    get_device_properties, get_device_name = _get_device_properties, _get_device_name
    __all__ += ["get_device_name", "get_device_properties", "get_rng_state_all", "set_rng_state_all",
                *memory.__all__]
