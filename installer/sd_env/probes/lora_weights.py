"""Probe: what a LoRA training run left in its output folder.

The tensors of pytorch_lora_weights.* (safetensors or a torch .bin), and the
`train_loss` scalars the v0.20.0 script logs to TensorBoard (it prints no
loss; its progress bar rounds it). Prints one JSON object:
{"ok", "file", "tensors", "finite", "up_max", "losses"}.
"""

import math
import sys
from pathlib import Path

from _result import report


def main(folder):
    files = sorted(Path(folder).glob("pytorch_lora_weights.*"))
    if not files:
        return {"ok": False, "error": f"no pytorch_lora_weights.* in {folder}"}
    path = files[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    else:
        import torch

        tensors = torch.load(str(path), map_location="cpu")
    finite = all(math.isfinite(float(t.float().abs().max())) for t in tensors.values())
    # LoRA up-weights start at zero: all still zero means the optimizer never moved them.
    ups = [float(t.float().abs().max()) for k, t in tensors.items() if k.endswith("up.weight")]
    return {"ok": bool(tensors) and finite, "file": str(path), "tensors": len(tensors), "finite": finite,
            "up_max": max(ups) if ups else None, "losses": logged_losses(Path(folder))}


def logged_losses(folder):
    events = sorted(folder.glob("logs/*/events.out.tfevents.*"))
    if not events:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    if "train_loss" not in acc.Tags().get("scalars", []):
        return []
    return [event.value for event in acc.Scalars("train_loss")]


if __name__ == "__main__":
    report(main, sys.argv[1])
