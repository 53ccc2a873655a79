"""The strict profile: what the real plugin refuses, switched on from a data file.

$SD_ENV_EMULATED_PROFILE names a JSON file (sd-env passes one of
sd_env/emulator/profiles/, one per plugin era, chosen by `--strict` or the
manifest's [emulator] profile). Each entry names a rule the emulator knows,
the card's error where it has one, and its source in Sophgo's code. Without
the variable nothing is refused beyond what the CPU kernels refuse.
"""

from __future__ import annotations

import json
import os

import torch

from torch_tpu import _C, _era

# Rules enforced in C++ (csrc/strict.cpp); "refuse_int64_storage" is torch's own check, switched on here.
KNOWN = {"refuse_int64_alloc", "int64_results_to_int32", "int64_host_copy_to_int32", "arange_int32",
         "scalar_tensor_int32", "max_allocation", "refuse_int64_storage"}
QUANTIZED = [torch.quint8, torch.quint4x2, torch.quint2x4, torch.qint32, torch.qint8]


def _load() -> dict:
    path = os.environ.get("SD_ENV_EMULATED_PROFILE")
    if not path:
        return {"name": None, "entries": []}
    with open(path, encoding="utf-8") as f:
        profile = json.load(f)
    if profile.get("torch") != _era.TORCH:
        raise RuntimeError(f"{path} is the profile of torch {profile.get('torch')}'s torch_tpu; this emulator is "
                           f"built for torch {_era.TORCH}")
    unknown = sorted({e["rule"] for e in profile["entries"]} - KNOWN)
    if unknown:
        raise RuntimeError(f"{path}: unknown rule(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN))})")
    return profile


PROFILE = _load()
RULES = {entry["rule"]: entry for entry in PROFILE["entries"]}
for _entry in PROFILE["entries"]:
    if _entry["rule"] != "refuse_int64_storage":
        _C.enable_rule(_entry["rule"], _entry.get("error", ""), int(_entry.get("value", 0)))


def storage_dtypes_refused() -> list:
    """Sophgo passes these to generate_methods_for_privateuse1_backend: `storage.tpu()` refuses them."""
    return [*QUANTIZED, torch.int64] if "refuse_int64_storage" in RULES else []


def name() -> str | None:
    return PROFILE.get("name")
