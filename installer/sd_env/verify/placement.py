"""Where a probe's work really ran, judged against the device its row claims.

A row never names the device it asked for as the one it used: the LoRA step
measures the devices of the loss it back-propagated and of the parameters its
optimizer stepped (the example script through the watcher on its PYTHONPATH,
probes/precision/sitecustomize.py; sd-env's own step in its JSON), the inference
probes those of the pipeline's parameters and of the UNet's output. Work that
ran elsewhere, or that could not be measured, fails its row. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The parts each probe measures: the row's words -> the key of the probe's JSON.
LORA = {"trained parameters": "trained_devices", "loss": "loss_devices"}
INFERENCE = {"pipeline parameters": "parameter_devices", "UNet output": "output_devices"}


@dataclass(frozen=True)
class Placement:
    seen: dict[str, list[str]]  # part -> the devices measured for it
    device: str | None  # what the row names: the measured device(s), None when nothing was measured
    problem: str | None  # None: every part ran on the claimed device

    def said(self) -> str:
        return said(self.seen)


def measure(claimed: str, data: Mapping[str, Any] | None, parts: Mapping[str, str], unmeasured: str) -> Placement:
    """The placement a probe's JSON `data` reports for `parts` (LORA or INFERENCE), judged."""
    seen = {what: sorted(set((data or {}).get(key) or [])) for what, key in parts.items()}
    device, problem = judge(claimed, seen, unmeasured)
    return Placement(seen, device, problem)


def same(claimed: str, measured: str) -> bool:
    """"tpu" and "tpu:0" are the same request; "tpu:0" and "tpu:1", or "tpu:0" and "cpu", are not."""
    want_type, _, want_index = claimed.partition(":")
    have_type, _, have_index = measured.partition(":")
    return want_type == have_type and (not want_index or not have_index or want_index == have_index)


def judge(claimed: str, seen: Mapping[str, Iterable[str]], unmeasured: str) -> tuple[str | None, str | None]:
    """(the device the work ran on, for the row: None when nothing was measured;
    what is wrong, or None when every measured part ran on `claimed`).

    `seen` maps each part (e.g. "trained parameters", "loss") to the devices measured for it;
    `unmeasured` says why a part can have no measurement (the probe's own words)."""
    parts = {what: sorted(set(devices)) for what, devices in seen.items()}
    found = sorted({d for devices in parts.values() for d in devices})
    ran_on = ", ".join(found) if found else None
    missing = [what for what, devices in parts.items() if not devices]
    if missing:
        return ran_on, f"the device of the {' and the '.join(missing)} could not be measured: {unmeasured}"
    wrong = {what: devices for what, devices in parts.items() if not all(same(claimed, d) for d in devices)}
    if wrong:
        return ran_on, f"the work did not run on {claimed} alone: {said(parts)}"
    return ran_on, None


def said(parts: Mapping[str, Iterable[str]]) -> str:
    """E.g. "trained parameters on cpu, loss on tpu:0", or "trained parameters and loss on tpu:0"."""
    shown = {what: ", ".join(sorted(set(devices))) or "nothing measured" for what, devices in parts.items()}
    if len(set(shown.values())) == 1 and len(shown) > 1:
        return f"{' and '.join(shown)} on {next(iter(shown.values()))}"
    return ", ".join(f"{what} on {where}" for what, where in shown.items())
