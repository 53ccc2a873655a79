"""Probe: the proof of the accelerate patch, on a "tpu" device (a card or sd-env's emulation).

With ACCELERATE_TORCH_DEVICE=tpu:0, `Accelerator(mixed_precision="fp16")` must
be on tpu:0 with torch_tpu's GradScaler (upstream 0.16.0 refuses: "fp16 mixed
precision requires a GPU"), and must train: 2 steps that change the weights
at an unchanged scale, then a step whose gradient holds an injected inf,
which the scaler must skip (weights unchanged) while halving the scale.

    ACCELERATE_TORCH_DEVICE=tpu:0 python accelerate_proof.py [--steps 2]

Prints one JSON object on its last stdout line; logs go to stderr.
"""

import argparse
import os
import time

from _result import report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="good steps before the injected inf")
    args = parser.parse_args()
    started = time.monotonic()
    os.environ.setdefault("ACCELERATE_TORCH_DEVICE", "tpu:0")
    import accelerate
    import torch
    import torch_tpu  # registers "tpu"; the patched accelerate imports it too
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="fp16")
    scaler = accelerator.scaler
    scaler_class = None if scaler is None else f"{type(scaler).__module__}.{type(scaler).__qualname__}"
    result = {"ok": False, "device": str(accelerator.device), "scaler": scaler_class,
              "torch_tpu_scaler": isinstance(scaler, torch_tpu.tpu.amp.GradScaler),
              "emulated": bool(getattr(torch_tpu, "EMULATED", False)), "accelerate_file": accelerate.__file__,
              "steps": []}
    if accelerator.device.type != "tpu" or scaler is None:
        result["error"] = f"fp16 Accelerator on {accelerator.device} with scaler {scaler_class}"
        return result

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    # On the device before the optimizer sees its parameters: `.to("tpu")` replaces them (see the diffusers patch).
    model = model.to(accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    x = torch.randn(32, 8, device=accelerator.device)
    y = torch.randn(32, 1, device=accelerator.device)

    def step(inject_inf):
        before = [p.detach().cpu().clone() for p in model.parameters()]
        scale_before = float(scaler.get_scale())
        with accelerator.autocast():
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        accelerator.backward(loss)
        if inject_inf:
            first = next(model.parameters())
            first.grad.view(-1)[0] = float("inf")
        optimizer.step()
        optimizer.zero_grad()
        changed = any(not torch.equal(b, p.detach().cpu()) for b, p in zip(before, model.parameters()))
        return {"loss": float(loss.detach().cpu()), "inf_injected": inject_inf, "scale_before": scale_before,
                "scale_after": float(scaler.get_scale()), "weights_changed": changed,
                "skipped": bool(getattr(optimizer, "step_was_skipped", not changed)),
                "grad_device": str(next(model.parameters()).device)}

    steps = [step(False) for _ in range(args.steps)] + [step(True)]
    good, bad = steps[:-1], steps[-1]
    trained = all(s["weights_changed"] and not s["skipped"] and s["scale_after"] == s["scale_before"] for s in good)
    skipped = bad["skipped"] and not bad["weights_changed"] and bad["scale_after"] == bad["scale_before"] / 2
    result.update(steps=steps, trained=trained, skipped_on_inf=skipped,
                  ok=trained and skipped and isinstance(scaler, torch_tpu.tpu.amp.GradScaler),
                  seconds=round(time.monotonic() - started, 3))
    return result


if __name__ == "__main__":
    report(main)
