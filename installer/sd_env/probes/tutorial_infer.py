"""Probe: inference the way the tutorial's sections 2.1 and 2.2 do it, on --device.

2.1: `torch.manual_seed(42)`, `generator = torch.Generator(device=device)`,
`DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float16)`,
`pipe.to(device)`, `pipe(prompt, generator=generator)`.
2.2: `StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float16)`,
`pipe.unet.load_attn_procs(lora)`, `pipe.to(device)`, `pipe(prompt)` (no
generator: the device's default one, which `torch.manual_seed` seeds).
Each is run twice from the same seed and must give the same image twice; the
LoRA image must differ from the base one only where the LoRA says so (finite,
same shape). The tutorial's 20 and 30 steps become --steps on the tiny model.

    python tutorial_infer.py --model DIR --lora DIR --device tpu:0 --steps 2

Prints one JSON object on its last stdout line; logs go to stderr.
"""

import argparse
import time

from _result import report

PROMPT = "cute dragon creature"  # the tutorial's


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    parser.add_argument("--lora", required=True, help="the folder unet.save_attn_procs wrote")
    parser.add_argument("--device", default="tpu:0")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args()


def main():
    args = parse_args()
    started = time.monotonic()
    import numpy as np
    import torch

    if args.device != "cpu":
        import torch_tpu  # the tutorial's `import torch_tpu`: registers the "tpu" device
    else:
        torch_tpu = None
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    device = torch.device(args.device)

    def section_2_1(pipe):
        torch.manual_seed(args.seed)
        generator = torch.Generator(device=device)
        return pipe(PROMPT, num_inference_steps=args.steps, generator=generator, output_type="np").images[0]

    def section_2_2(pipe):
        torch.manual_seed(args.seed)
        return pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, output_type="np").images[0]

    output_devices, parameter_devices = set(), set()  # measured: where the work really ran

    def measured(pipe):
        pipe.unet.register_forward_hook(lambda module, inputs, out: output_devices.add(str(out[0].device)))
        models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        parameter_devices.update(str(p.device) for m in models for p in m.parameters())
        return pipe

    pipe = DiffusionPipeline.from_pretrained(args.model, revision=None, torch_dtype=torch.float16)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    base = [section_2_1(measured(pipe)), section_2_1(pipe)]
    dtype = str(pipe.unet.dtype).replace("torch.", "")
    unet_device = str(pipe.unet.device)
    del pipe

    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float16)
    pipe.unet.load_attn_procs(args.lora)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    loaded = sum(type(p).__name__.startswith("LoRA") for p in pipe.unet.attn_processors.values())
    lora = [section_2_2(measured(pipe)), section_2_2(pipe)]

    finite = all(bool(np.isfinite(image).all()) for image in base + lora)
    same_base = bool(np.array_equal(base[0], base[1]))
    same_lora = bool(np.array_equal(lora[0], lora[1]))
    return {
        "ok": finite and same_base and same_lora and loaded > 0 and unet_device.startswith(device.type),
        "device": unet_device,
        "parameter_devices": sorted(parameter_devices),
        "output_devices": sorted(output_devices),
        "emulated": bool(getattr(torch_tpu, "EMULATED", False)),
        "dtype": dtype,
        "shape": list(base[0].shape),
        "finite": finite,
        "same_image_twice": same_base,
        "same_lora_image_twice": same_lora,
        "lora_processors": loaded,
        "lora_vs_base_max_diff": float(np.abs(lora[0].astype("float64") - base[0].astype("float64")).max()),
        "seconds": round(time.monotonic() - started, 3),
    }


if __name__ == "__main__":
    report(main)
