"""What precision a training run really used, from the watcher's records.

`--mixed_precision fp16` is a request: with accelerate 0.16.0 the fp16 forward
is wrapped in `torch.cuda.amp.autocast`, which does nothing on a "tpu" device,
and the v0.20.0 script casts the frozen UNet to fp16 itself. The watcher
(probes/precision/sitecustomize.py, put first on PYTHONPATH for one run)
counts the dtypes the UNet's matmuls ran in, and the devices of the loss and of
the trained parameters; this module turns its JSON lines into one sentence for
verify. Pure: no subprocess, no torch.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ENV_OUT = "SD_ENV_PRECISION_OUT"


def watcher_dir() -> Path:
    """The folder to put first on PYTHONPATH (it holds the watcher as sitecustomize.py)."""
    return Path(str(resources.files("sd_env") / "probes" / "precision"))


def watch_env(out: Path, pythonpath: str | None) -> dict[str, str]:
    """The variables that put the watcher on one run, writing to `out`, ahead of `pythonpath`."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(watcher_dir()), pythonpath])), ENV_OUT: str(out)}


@dataclass
class Precision:
    """Matmul-family op counts of the training forwards, by part (base, lora) and dtype."""

    ops: dict[str, Counter] = field(default_factory=dict)  # part -> dtype -> count
    devices: set[str] = field(default_factory=set)
    scaler: str | None = None
    scale: float | None = None
    autocast: list[str] = field(default_factory=list)
    backward_calls: int = 0
    # Where the training ran, seen at each Accelerator.backward: "tpu:0", "cpu", ...
    loss_devices: set[str] = field(default_factory=set)
    trained_devices: set[str] = field(default_factory=set)  # of the parameters the optimizers step

    @property
    def measured(self) -> bool:
        return any(self.ops.values())

    def dtypes(self, part: str) -> list[str]:
        return sorted(self.ops.get(part, Counter()))

    def as_dict(self) -> dict[str, Any]:
        return {"ops": {part: dict(c) for part, c in self.ops.items()}, "devices": sorted(self.devices),
                "scaler": self.scaler, "scale": self.scale, "autocast": self.autocast,
                "backward_calls": self.backward_calls, "loss_devices": sorted(self.loss_devices),
                "trained_devices": sorted(self.trained_devices)}


def read(path: Path) -> Precision:
    """The training forwards' counts from the watcher's file (missing file: nothing measured)."""
    got = Precision()
    if not path.is_file():
        return got
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for key, count in record.get("counts", {}).items():
            phase, part, _op, dtype, device = key.split("|")
            if phase != "train":
                continue
            got.ops.setdefault(part, Counter())[dtype] += count
            got.devices.add(device)
        if record.get("backward_calls"):
            got.backward_calls += record["backward_calls"]
            got.scaler, got.scale = record.get("scaler"), record.get("scale")
        got.autocast += [a for a in record.get("autocast", []) if a not in got.autocast]
        got.loss_devices.update(record.get("loss_devices", []))
        got.trained_devices.update(record.get("trained_devices", []))
    return got


def _short(dtype: str) -> str:
    return {"float16": "fp16", "float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)


def _part(counter: Counter) -> str:
    return " + ".join(f"{_short(d)} ({n} ops)" for d, n in sorted(counter.items()))


def summary(requested: str, got: Precision) -> str:
    """E.g. "fp16 requested; UNet forward: frozen layers ran in fp16 (182 ops), LoRA layers in fp32 (128 ops);
    autocast off; loss scaling on (torch_tpu.tpu.amp.GradScaler, scale 65536)"."""
    asked = "fp32 (no mixed precision)" if requested == "no" else requested
    if not got.measured:
        return f"{asked} requested; the UNet's matmul dtypes were not measured (no training forward seen)"
    base, lora = got.ops.get("base", Counter()), got.ops.get("lora", Counter())
    parts = []
    if base:
        parts.append(f"frozen layers ran in {_part(base)}")
    if lora:
        parts.append(f"LoRA layers in {_part(lora)}")
    autocast_on = any("=True" in a for a in got.autocast)
    text = f"{asked} requested; UNet forward: {', '.join(parts)}; autocast {'on' if autocast_on else 'off'}"
    if got.scaler:
        scale = f", scale {got.scale:g}" if got.scale is not None else ""
        text += f"; loss scaling on ({got.scaler}{scale})"
    elif got.backward_calls:
        text += "; loss scaling off"
    return text


def ranks(path: Path) -> dict[int, dict[str, Any]]:
    """The watcher's records of a data-parallel run (SD_ENV_PRECISION_WEIGHTS=1), by rank: each process's
    loss and trained devices, its losses, and the digests of its trained weights at the start and at exit."""
    if not path.is_file():
        return {}
    records = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    return {int(r["rank"]): r for r in records if "rank" in r}
