"""Probe: inference the way Sophgo's SD 1.5 LoRA demo does it (its final validation), on --device.

The demo (torch_tpu/demo/sd15_LoRA_Finetune, diffusers >= 0.29):
`DiffusionPipeline.from_pretrained(model, torch_dtype=weight_dtype)`,
`pipeline.load_lora_weights(output_dir)`, `pipeline.to(device)`,
`generator = torch.Generator(device=device).manual_seed(seed)`, then
`pipeline(prompt, num_inference_steps=30, generator=generator)` inside
`torch.autocast(device.type)`. Run twice from the same seed it must give the same
image twice; the pipeline without the LoRA is drawn once to compare. The demo's 30
steps become --steps on the tiny model; its fp16 is --dtype.

    python demo_infer.py --model DIR --lora DIR --device tpu:0 --steps 2

Prints one JSON object on its last stdout line; logs go to stderr.
"""

import argparse
import time

from _result import report

PROMPT = "cute dragon creature"  # the demo's train.sh --validation_prompt


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder")
    parser.add_argument("--lora", required=True, help="the folder the example script saved its LoRA weights to")
    parser.add_argument("--device", default="tpu:0")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    return parser.parse_args()


def main():
    args = parse_args()
    started = time.monotonic()
    import numpy as np
    import torch

    if args.device != "cpu":
        import torch_tpu  # the demo's `import torch_tpu`: registers the "tpu" device
    else:
        torch_tpu = None
    from diffusers import DiffusionPipeline

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    def draw(pipeline):
        generator = torch.Generator(device=device).manual_seed(args.seed)
        with torch.autocast(device.type):
            return pipeline(PROMPT, num_inference_steps=args.steps, generator=generator, output_type="np").images[0]

    pipeline = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
    pipeline.set_progress_bar_config(disable=True)
    pipeline = pipeline.to(device)
    base = draw(pipeline)
    # The demo passes the folder alone; offline (HF_HUB_OFFLINE=1) diffusers 0.29 needs the file named.
    pipeline.load_lora_weights(args.lora, weight_name="pytorch_lora_weights.safetensors")
    pipeline = pipeline.to(device)  # the demo loads the LoRA before moving; the adapters must be on the device too
    lora_layers = sum(1 for name, _ in pipeline.unet.named_parameters() if "lora" in name)
    images = [draw(pipeline), draw(pipeline)]
    unet_device = str(next(pipeline.unet.parameters()).device)

    finite = all(bool(np.isfinite(image).all()) for image in [base, *images])
    same = bool(np.array_equal(images[0], images[1]))
    return {
        "ok": finite and same and lora_layers > 0 and unet_device.startswith(device.type),
        "device": unet_device,
        "emulated": bool(getattr(torch_tpu, "EMULATED", False)),
        "dtype": str(pipeline.unet.dtype).replace("torch.", ""),
        "shape": list(images[0].shape),
        "finite": finite,
        "same_image_twice": same,
        "lora_parameters": lora_layers,
        "lora_vs_base_max_diff": float(np.abs(images[0].astype("float64") - base.astype("float64")).max()),
        "seconds": round(time.monotonic() - started, 3),
    }


if __name__ == "__main__":
    report(main)
