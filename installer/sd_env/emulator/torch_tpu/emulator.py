"""What only an emulator can tell: memory per device, the ops that ran on the CPU.

    torch_tpu.emulator.stats()  -> {"devices": [{"index", "peak_bytes", ...}], "cpu_fallback": {op: calls}, ...}

Settings (environment, read at import):
  SD_ENV_EMULATED_MEMORY    per-device capacity ("16G", "512M", "1.5G", bytes); past it an
                            allocation fails with the card's out-of-memory error. Unset: no limit.
  SD_ENV_EMULATED_CPU_OPS   ops the device is told to lack ("aten::upsample_nearest2d,mse_loss"):
                            they still run, on the CPU as the card would, and are counted by name.
  SD_ENV_EMULATOR_STATS     a file to which stats() is appended as one JSON line at exit (one line
                            per process, so the processes of a multi-device run share the file).
Works in both eras (the 2.1-era plugin has no memory functions of its own; the 2.8-era
ones, torch_tpu.tpu.memory_allocated and friends, read the same counters).
"""

from __future__ import annotations

import atexit
import json
import os
import re

from torch_tpu import _C, _profile

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """'16G', '16GiB', '512M', '1.5G', '1000000' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ValueError(f"SD_ENV_EMULATED_MEMORY={text!r}: not a size (e.g. 16G, 512M, 1.5G, or bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def memory_stats(device: int) -> dict:
    """The counters of one device: allocated_bytes / requested_bytes / allocation, each with
    current, peak, allocated (total ever) and freed; num_ooms; capacity (0: none)."""
    return _C.memory_stats(int(device))


def stats() -> dict:
    devices = []
    for index in range(_C.device_count()):
        m = memory_stats(index)
        devices.append({"index": index, "current_bytes": m["allocated_bytes"]["current"],
                        "peak_bytes": m["allocated_bytes"]["peak"],
                        "peak_requested_bytes": m["requested_bytes"]["peak"],
                        "allocations": m["allocation"]["allocated"], "num_ooms": m["num_ooms"],
                        "capacity_bytes": m["capacity"] or None})
    return {"pid": os.getpid(), "devices": devices, "cpu_fallback": dict(_C.cpu_fallback_counts()),
            "profile": _profile.name()}


def _dump(path: str) -> None:
    line = json.dumps(stats()) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())  # one write: lines of several processes do not interleave
    finally:
        os.close(fd)


def configure() -> None:
    capacity = os.environ.get("SD_ENV_EMULATED_MEMORY")
    if capacity:
        for index in range(_C.device_count()):
            _C.set_memory_capacity(index, parse_size(capacity))
    _C.set_cpu_ops(os.environ.get("SD_ENV_EMULATED_CPU_OPS", ""))
    out = os.environ.get("SD_ENV_EMULATOR_STATS")
    if out:
        atexit.register(_dump, out)
