"""Probe: what a LoRA training run left in its output folder.

The tensors of pytorch_lora_weights.* (safetensors or a torch .bin), and the
`train_loss` scalars the v0.20.0 script logs to TensorBoard (it prints no
loss; its progress bar rounds it). Prints one JSON object:
{"ok", "file", "tensors", "finite", "up_max", "losses", "step_seconds"} (the wall time between
consecutive logged steps).
"""

import math
import struct
import sys
from pathlib import Path

from _result import report

# The up (B) matrices: "...lora.up.weight" in diffusers' own format, "...lora_B.weight" in peft's (the
# example saves that from diffusers 0.25.0 on).
UP = ("up.weight", "lora_B.weight")


def main(folder):
    found = read(folder)
    if found.get("ok") is not None and "file" in found:
        found.update(losses=logged_losses(Path(folder)), step_seconds=step_seconds(logged(Path(folder))))
    return found


def read(folder):
    """The saved LoRA tensors only (rehearse_run.py reads these before TensorBoard has flushed)."""
    files = sorted(Path(folder).glob("pytorch_lora_weights.*"))
    if not files:
        return {"ok": False, "error": f"no pytorch_lora_weights.* in {folder}"}
    path = files[0]
    if path.suffix == ".safetensors":
        import numpy as np
        from safetensors.numpy import load_file  # numpy, not torch: this probe stays light

        arrays = load_file(str(path))
        finite = all(bool(np.isfinite(t.astype(np.float32)).all()) for t in arrays.values())
        count = len(arrays)
        ups = [float(np.abs(t.astype(np.float32)).max()) for k, t in arrays.items() if k.endswith(UP)]
    else:
        import torch

        tensors = torch.load(str(path), map_location="cpu")
        finite = all(math.isfinite(float(t.float().abs().max())) for t in tensors.values())
        count = len(tensors)
        ups = [float(t.float().abs().max()) for k, t in tensors.items() if k.endswith(UP)]
    # LoRA up-weights start at zero: all still zero means the optimizer never moved them.
    return {"ok": count > 0 and finite, "file": str(path), "tensors": count, "finite": finite,
            "up_max": max(ups) if ups else None}


def step_seconds(points):
    """Seconds between consecutive logged steps (the script logs once per optimizer step)."""
    return [round(b[1] - a[1], 4) for a, b in zip(points, points[1:])]


def logged_losses(folder):
    return [loss for loss, _wall in logged(folder)]


def logged(folder):
    """(train_loss, wall time) per step, in step order, read from the event file's TFRecord frames with
    only the Event protobuf (tensorboard's EventAccumulator costs seconds of imports)."""
    events = sorted(folder.glob("logs/*/events.out.tfevents.*"))
    if not events:
        return []
    from tensorboard.compat.proto import event_pb2

    # The newest run's file: a reused output folder keeps the older runs' logs beside it.
    data = max(events, key=lambda p: p.stat().st_mtime).read_bytes()
    found = []
    pos = 0
    while pos + 12 <= len(data):  # frame: u64 length, u32 crc, payload, u32 crc
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for value in event.summary.value:
            if value.tag == "train_loss":
                number = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
                found.append((event.step, number, event.wall_time))
    return [(number, wall) for _step, number, wall in sorted(found, key=lambda item: item[0])]


if __name__ == "__main__":
    report(main, sys.argv[1])
