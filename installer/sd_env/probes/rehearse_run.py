"""Probe: run the patched example script in this process and measure its training.

    python rehearse_run.py SCRIPT ARGS...     (in the target, with the emulated torch_tpu on PYTHONPATH)

Runs diffusers' train_text_to_image_lora.py as __main__ (runpy) and stops it where its
training ends: at its "Final inference", the second pipeline it loads after saving the LoRA
weights (that load is not the training's need, and would hold a second copy of the weights).
Measured in here, not inferred: each optimizer step's loss and time (Accelerator.log, which
the script calls once per step), the emulated device's counters at that point
(torch_tpu.emulator.stats(): peak bytes, also as of the last step's end, out-of-memory
errors, ops run on the CPU), the
process's peak RSS, and the LoRA weights the script saved (finite, moved from zero).
Prints one JSON object; an out-of-memory error is a result ("oom": true), not a crash.
"""

import resource
import runpy
import sys
import time
from pathlib import Path

from _result import report
from lora_weights import read as read_weights


class TrainingDone(Exception):
    """Raised at the script's final pipeline load: the training is over, its weights saved."""


def main(script, *argv):
    started = time.monotonic()
    import accelerate
    import diffusers
    import torch_tpu  # the emulated one: PYTHONPATH puts it first

    steps = []  # (step, train_loss, seconds since start)
    peaks = []  # the device's peak so far, at the end of each step
    logged = accelerate.Accelerator.log

    def log(self, values, step=None, log_kwargs=None):
        if "train_loss" in values:
            steps.append((step, float(values["train_loss"]), time.monotonic() - started))
            peaks.append(torch_tpu.emulator.memory_stats(0)["allocated_bytes"]["peak"])
            print(f"[{steps[-1][2]:7.1f} s] step {step} loss {steps[-1][1]:.4f}", file=sys.stderr, flush=True)
        return logged(self, values, step=step, log_kwargs=log_kwargs or {})

    def stop(*_args, **_kwargs):
        raise TrainingDone()

    prepared = accelerate.Accelerator.prepare
    loaded = []  # device bytes in use when the script prepares its training: the models are on the device

    def prepare(self, *args, **kwargs):
        loaded.append(torch_tpu.emulator.memory_stats(0)["allocated_bytes"]["current"])
        return prepared(self, *args, **kwargs)

    accelerate.Accelerator.prepare = prepare
    accelerate.Accelerator.log = log
    diffusers.DiffusionPipeline.from_pretrained = stop
    sys.argv = [script, *argv]
    error = None
    try:
        runpy.run_path(script, run_name="__main__")
    except TrainingDone:
        pass
    except Exception as exc:  # the card's out-of-memory error among them: reported with the counters
        import traceback

        traceback.print_exc()
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    stats = torch_tpu.emulator.stats()
    device = stats["devices"][0]
    out = Path(argv[argv.index("--output_dir") + 1])
    weights = read_weights(out) if error is None else {}
    times = [t for _s, _l, t in steps]
    losses = [loss for _s, loss, _t in steps]
    return {
        "ok": error is None and bool(weights.get("ok")),
        "error": error,
        "oom": device["num_ooms"] > 0,
        "peak_bytes": device["peak_bytes"],
        # The peak up to the last step's end: what came after is the script's saving of the LoRA,
        # which first converts the whole UNet to fp32 on the device (unet.to(torch.float32)).
        "steps_peak_bytes": peaks[-1] if peaks else None,
        "loaded_bytes": loaded[0] if loaded else None,  # None: it never got as far as the training
        "capacity_bytes": device["capacity_bytes"],
        "cpu_fallback": stats["cpu_fallback"],
        "profile": stats["profile"],
        "losses": losses,
        "finite": bool(weights.get("finite")) and bool(losses),
        "up_max": weights.get("up_max"),
        "tensors": weights.get("tensors", 0),
        "first_step_seconds": round(times[0], 3) if times else None,  # includes loading and moving the models
        "step_seconds": [round(b - a, 3) for a, b in zip(times, times[1:])],
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds": round(time.monotonic() - started, 3),
    }


if __name__ == "__main__":
    report(main, *sys.argv[1:])
