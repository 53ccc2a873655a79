"""Probe: inference with and without trained LoRA weights, on --device.

Runs the pipeline with a fixed seed three times: the base model, then with the
LoRA attention processors loaded at scale 0.0 (must match the base: proves the
LoRA path is wired in and changes nothing when switched off) and at scale 1.0
(the LoRA effect; tiny after a 2-step training, because LoRA up-weights start
at zero and move by about the learning rate per step).

    python lora_infer.py --model DIR --lora DIR --device tpu:0 --steps 2

Prints one JSON object on its last stdout line; logs go to stderr.
"""

import argparse
import os
import time

from _result import report

PROMPT = "a red square"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    parser.add_argument("--lora", required=True, help="the folder unet.save_attn_procs wrote")
    parser.add_argument("--device", default="cpu", help="cpu, or tpu:0 for a Sophgo card")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--go", help="a file to wait for before loading the LoRA: verify writes `go` into it "
                        "once the training step passed (anything else: stop), so the imports and the base image "
                        "overlap the training")
    parser.add_argument("--torch-checks", metavar="WANT", help="also report torch_checks.py's device facts "
                        "and Linear smoke test (saves verify a process that imports torch)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="largest allowed difference between the base and the scale 0.0 images")
    return parser.parse_args()


def parameter_devices(pipe):
    """The devices of every parameter of the pipeline's models (the LoRA layers' too)."""
    import torch

    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return sorted({str(p.device) for m in modules for p in m.parameters()})


def main():
    args = parse_args()
    started = time.monotonic()
    import numpy as np
    import torch

    try:
        import torch_tpu  # registers the "tpu" device
    except ImportError:
        torch_tpu = None
    if args.device.startswith("tpu") and torch_tpu is None:
        raise RuntimeError(f"--device {args.device} needs Sophgo's torch_tpu, which is not importable here")
    checks = None
    if args.torch_checks:
        from torch_checks import run_checks

        checks = run_checks(args.torch_checks)
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.model).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    output_devices = set()  # where the UNet's forwards really produced their output
    pipe.unet.register_forward_hook(lambda module, inputs, out: output_devices.add(str(out[0].device)))

    def generate(**kwargs):
        # A CPU generator: the same noise on every device, and no need for the
        # device to implement torch.Generator.
        generator = torch.Generator(device="cpu").manual_seed(args.seed)
        # Height and width default to the UNet's sample size times the VAE factor.
        return pipe(PROMPT, num_inference_steps=args.steps, generator=generator, output_type="np",
                    **kwargs).images[0]

    base = generate()
    waited = 0.0
    if args.go:
        waiting = time.monotonic()
        while not os.path.exists(args.go):
            time.sleep(0.1)
        waited = time.monotonic() - waiting
        with open(args.go, encoding="utf-8") as marker:
            if marker.read().strip() != "go":
                return {"ok": False, "error": "the LoRA step did not pass", "waited": waited, "torch_checks": checks}
    pipe.unet.load_attn_procs(args.lora)
    pipe.to(args.device)  # load_attn_procs follows the UNet's device; this makes sure of it
    # Without this, a load that silently kept the plain processors would pass scale 0.0.
    # diffusers up to 0.2x loads LoRA attention processors; with the peft backend (0.29) peft LoRA layers.
    loaded = sum(type(p).__name__.startswith("LoRA") for p in pipe.unet.attn_processors.values()) + \
        sum(hasattr(m, "lora_A") for m in pipe.unet.modules())
    off = generate(cross_attention_kwargs={"scale": 0.0})
    on = generate(cross_attention_kwargs={"scale": 1.0})
    scale0 = float(np.abs(off - base).max())
    scale1 = float(np.abs(on - base).max())
    finite = bool(np.isfinite(base).all() and np.isfinite(on).all())
    return {
        "ok": finite and loaded > 0 and scale0 <= args.tolerance,
        "device": str(pipe.device),
        "parameter_devices": parameter_devices(pipe),
        "output_devices": sorted(output_devices),
        "torch_tpu": torch_tpu is not None,
        "shape": list(base.shape),
        "lora_processors": loaded,
        "finite": finite,
        "scale0_max_diff": scale0,
        "scale1_max_diff": scale1,
        "tolerance": args.tolerance,
        "waited": round(waited, 3),
        "torch_checks": checks,
        "seconds": round(time.monotonic() - started - waited, 3),
    }


if __name__ == "__main__":
    report(main)
