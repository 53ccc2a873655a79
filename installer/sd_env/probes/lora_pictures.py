"""Probe: the pictures at the end of `sd-env train`, drawn with Pillow only.

1. The validation prompt rendered by the base model and by the model with the
   new LoRA, same seed, side by side in one PNG (the tutorial's
   pokemon_wo_lora.png and pokemon_w_lora.png, in one picture).
2. The loss curve from the training script's TensorBoard log (`train_loss`).

    python lora_pictures.py --model DIR --lora DIR --prompt TEXT --device cpu --out DIR

Prints one JSON object on its last stdout line: {"ok", "compare", "loss_curve", "steps", ...}.
"""

import argparse
import time
from pathlib import Path

from _result import report
from lora_weights import logged_losses

MIN_SIDE = 256  # a tiny test model renders 32x32: scaled up so a person can see it
CURVE_SIZE = (720, 420)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the base model folder the LoRA was trained on")
    parser.add_argument("--lora", required=True, help="the training output folder (pytorch_lora_weights.*)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--steps", type=int, default=30, help="inference steps (the tutorial uses 30)")
    parser.add_argument("--out", required=True, type=Path, help="where to write the two PNGs")
    return parser.parse_args()


def render_pair(args):
    """(without, with) the LoRA as PIL images, from the same seed."""
    import torch

    try:
        import torch_tpu  # noqa: F401 - registers the "tpu" device
    except ImportError:
        if args.device.startswith("tpu"):
            raise
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if args.device.startswith("tpu") else torch.float32  # no Half conv2d on the CPU
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)

    def generate():
        # A CPU generator gives the same noise on every device.
        generator = torch.Generator(device="cpu").manual_seed(args.seed)
        return pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=7.5, generator=generator).images[0]

    without = generate()
    pipe.unet.load_attn_procs(args.lora)
    pipe.to(args.device)
    return without, generate()


def side_by_side(without, with_lora, prompt, seed):
    from PIL import Image, ImageDraw

    scale = max(1, -(-MIN_SIDE // min(without.size)))
    tiles = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in (without, with_lora)]
    w, h = tiles[0].size
    pad, top, bottom = 12, 30, 26
    canvas = Image.new("RGB", (2 * w + 3 * pad, h + top + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 8), f'"{prompt}"  (seed {seed})', fill="black")
    for i, (tile, label) in enumerate(zip(tiles, ("without the LoRA", "with the LoRA"))):
        x = pad + i * (w + pad)
        canvas.paste(tile, (x, top))
        draw.text((x, top + h + 6), label, fill="black")
    return canvas


def loss_curve(losses):
    """train_loss per step (light) and its moving average (dark), with labelled axes."""
    from PIL import Image, ImageDraw

    width, height = CURVE_SIZE
    left, right, top, bottom = 70, 20, 36, 44
    canvas = Image.new("RGB", CURVE_SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 10), f"train_loss over {len(losses)} steps (from the TensorBoard log)", fill="black")
    x0, y0, x1, y1 = left, height - bottom, width - right, top
    draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black")
    if not losses:
        draw.text((x0 + 10, (y0 + y1) // 2), "no train_loss scalars were logged", fill="black")
        return canvas
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0

    def point(i, value):
        x = x0 + (x1 - x0) * (i / max(1, len(losses) - 1))
        return x, y0 - (y0 - y1) * ((value - low) / span)

    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    for series, colour, size in ((losses, (160, 190, 230), 1), (smooth, (20, 60, 160), 2)):
        points = [point(i, v) for i, v in enumerate(series)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=size)
        for x, y in points if len(points) == 1 else []:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    draw.text((6, y1 - 6), f"{high:.4g}", fill="black")
    draw.text((6, y0 - 6), f"{low:.4g}", fill="black")
    draw.text((x0, y0 + 8), "step 1", fill="black")
    draw.text((x1 - 60, y0 + 8), f"step {len(losses)}", fill="black")
    return canvas


def main():
    args = parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    without, with_lora = render_pair(args)
    compare = args.out / "validation_compare.png"
    side_by_side(without, with_lora, args.prompt, args.seed).save(compare)
    losses = logged_losses(Path(args.lora))
    curve = args.out / "loss_curve.png"
    loss_curve(losses).save(curve)
    return {"ok": True, "compare": str(compare), "loss_curve": str(curve), "steps": len(losses),
            "last_loss": losses[-1] if losses else None, "image_size": list(without.size),
            "seconds": round(time.monotonic() - started, 3)}


if __name__ == "__main__":
    report(main)
