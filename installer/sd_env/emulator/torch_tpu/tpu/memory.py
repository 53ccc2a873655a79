"""torch_tpu.tpu's memory functions (the 2.8-era plugin's, CUDA-style), on the emulator's counters.

Every byte the emulated device holds is counted per device (csrc/memory.cpp),
rounded as the 2.8-era allocator rounds (TPU_ALLOCATOR_ALIGN_SIZE, default
1 MiB). There is no cache: reserved equals allocated, empty_cache frees nothing.
"""

from __future__ import annotations

import collections
from typing import Any

import torch

from torch_tpu import _C, emulator
from torch_tpu.tpu.random import _index

__all__ = [
    "empty_cache", "max_memory_allocated", "max_memory_cached", "max_memory_reserved", "mem_get_info",
    "memory_allocated", "memory_cached", "memory_reserved", "memory_snapshot", "memory_stats",
    "memory_stats_as_nested_dict", "memory_summary", "reset_accumulated_memory_stats", "reset_max_memory_allocated",
    "reset_max_memory_cached", "reset_peak_memory_stats", "set_per_process_memory_fraction",
]


def memory_stats_as_nested_dict(device: torch.device | str | int | None = None) -> dict[str, Any]:
    raw = emulator.memory_stats(_index(device))
    counts = {k: raw[k] for k in ("allocated_bytes", "requested_bytes", "allocation")}
    nested: dict[str, Any] = {name: {"all": dict(value)} for name, value in counts.items()}
    nested["reserved_bytes"] = {"all": dict(raw["allocated_bytes"])}  # no cache: reserved is allocated
    nested["active_bytes"] = {"all": dict(raw["allocated_bytes"])}
    nested["segment"] = {"all": dict(raw["allocation"])}
    nested["num_ooms"] = raw["num_ooms"]
    nested["num_alloc_retries"] = 0
    return nested


def memory_stats(device: torch.device | str | int | None = None) -> dict[str, Any]:
    """A flat, sorted dict: "allocated_bytes.all.current", "allocated_bytes.all.peak", ..."""
    flat: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat.append((prefix, value))

    walk("", memory_stats_as_nested_dict(device))
    return collections.OrderedDict(sorted(flat))


def memory_allocated(device: torch.device | str | int | None = None) -> int:
    return memory_stats(device)["allocated_bytes.all.current"]


def max_memory_allocated(device: torch.device | str | int | None = None) -> int:
    return memory_stats(device)["allocated_bytes.all.peak"]


def memory_reserved(device: torch.device | str | int | None = None) -> int:
    return memory_stats(device)["reserved_bytes.all.current"]


def max_memory_reserved(device: torch.device | str | int | None = None) -> int:
    return memory_stats(device)["reserved_bytes.all.peak"]


memory_cached, max_memory_cached = memory_reserved, max_memory_reserved


def reset_peak_memory_stats(device: torch.device | str | int | None = None) -> None:
    _C.reset_peak_memory_stats(_index(device))


reset_max_memory_allocated = reset_max_memory_cached = reset_peak_memory_stats


def reset_accumulated_memory_stats(device: torch.device | str | int | None = None) -> None:
    _C.reset_accumulated_memory_stats(_index(device))


def empty_cache() -> None:
    """Nothing is cached: freed memory goes back at once."""


def _capacity(index: int) -> int:
    return emulator.memory_stats(index)["capacity"]


def mem_get_info(device: torch.device | str | int | None = None) -> tuple[int, int]:
    """(free, total) bytes; total is the emulated capacity, 0 without one (as the 2.8-era
    plugin's get_device_properties reports total_memory 0)."""
    index = _index(device)
    total = _capacity(index)
    return (max(total - memory_allocated(index), 0), total)


def set_per_process_memory_fraction(fraction: float, device: torch.device | str | int | None = None) -> None:
    if not isinstance(fraction, float):
        raise TypeError("Invalid type for fraction argument, must be `float`")
    if not 0 <= fraction <= 1:
        raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
    index = _index(device)
    total = _capacity(index)
    if not total:
        raise RuntimeError("the emulated tpu has no capacity to take a fraction of: set SD_ENV_EMULATED_MEMORY "
                           "(e.g. 16G) or the manifest's [emulator] memory")
    _C.set_memory_capacity(index, int(total * fraction))


def memory_snapshot() -> list:
    return []


def memory_summary(device: torch.device | str | int | None = None, abbreviated: bool = False) -> str:
    s = memory_stats(device)
    return (f"tpu:{_index(device)} (emulated): {s['allocated_bytes.all.current']} bytes allocated, peak "
            f"{s['allocated_bytes.all.peak']}, {s['allocation.all.current']} allocations, {s['num_ooms']} OOMs")
