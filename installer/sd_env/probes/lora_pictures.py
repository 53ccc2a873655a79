"""Probe: the pictures at the end of `sd-env train`, drawn with Pillow only.

1. The validation prompt rendered by the base model and by the model with the
   new LoRA, same seed, side by side in one PNG (the tutorial's
   pokemon_wo_lora.png and pokemon_w_lora.png, in one picture).
   The measured pixel difference is printed under them: after a short run the two
   can be 1/255 apart, which looks like "no change" or like a bug.
2. The loss curve from the training script's TensorBoard log (`train_loss`): each
   step a dot, the moving mean a line, labelled axes from 0.

    python lora_pictures.py --model DIR --lora DIR --prompt TEXT --device cpu --out DIR

Prints one JSON object on its last stdout line: {"ok", "compare", "loss_curve", "steps", "max_diff",
"mean_diff", "note", ...}.
"""

import argparse
import math
import textwrap
import time
from pathlib import Path

from _result import report
from lora_weights import logged_losses

MIN_SIDE = 256  # a tiny test model renders 32x32: scaled up so a person can see it
CURVE_SIZE = (720, 420)
CHAR_WIDTH = 6  # Pillow's default bitmap font


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


def difference(without, with_lora):
    """(max, mean) absolute pixel difference of the two renders, in 1/255 steps."""
    from PIL import ImageChops, ImageStat

    diff = ImageChops.difference(without.convert("RGB"), with_lora.convert("RGB"))
    stat = ImageStat.Stat(diff)
    return max(high for _low, high in diff.getextrema()), sum(stat.mean) / len(stat.mean)


def difference_note(largest, mean, steps):
    """What the two renders' difference means, printed on the picture: after a short run the
    LoRA may change a pixel by 1/255, which no eye sees."""
    after = f" after {steps} training steps" if steps else ""
    if largest == 0:
        return f"the two images are identical (pixel difference 0/255): the LoRA changed nothing{after}"
    said = f"the two images differ by at most {largest}/255 per pixel (mean {mean:.2f}/255)"
    if largest <= 8:
        return f"{said}: nearly identical, the LoRA barely changed the image{after}"
    return f"{said}{after}"


def side_by_side(without, with_lora, prompt, seed, note=""):
    from PIL import Image, ImageDraw

    scale = max(1, -(-MIN_SIDE // min(without.size)))
    tiles = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in (without, with_lora)]
    w, h = tiles[0].size
    pad = 12
    width = 2 * w + 3 * pad
    lines = textwrap.wrap(note, max(20, (width - 2 * pad) // CHAR_WIDTH)) if note else []
    top, bottom = 30, 26 + 14 * len(lines) + (6 if lines else 0)
    canvas = Image.new("RGB", (width, h + top + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 8), f'"{prompt}"  (seed {seed})', fill="black")
    for i, (tile, label) in enumerate(zip(tiles, ("without the LoRA", "with the LoRA"))):
        x = pad + i * (w + pad)
        canvas.paste(tile, (x, top))
        draw.text((x, top + h + 6), label, fill="black")
    for i, line in enumerate(lines):  # in red: what the eye cannot tell (1/255 apart looks the same)
        draw.text((pad, top + h + 26 + 14 * i), line, fill=(160, 0, 0))
    return canvas


def smooth(losses):
    """The moving mean of the last `window` finite losses, and the window (1 when too few to smooth)."""
    window = max(1, min(len(losses) // 4, 50))
    means = []
    for i in range(len(losses)):
        finite = [v for v in losses[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        means.append(sum(finite) / len(finite) if finite else math.nan)
    return means, window


def y_ticks(high):
    """0 up to a round value at or above `high`, in 4 or 5 equal steps: a y-axis from 0 keeps the
    step-to-step noise of a diffusion loss from looking like swings."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def curve_title(steps, window):
    shown = "a dot per step" if window == 1 else f"a dot per step, the line the mean of the last {window}"
    short = "; a short run: so few steps say little about training" if 0 < steps < 50 else ""
    return f"train_loss over {steps} steps ({shown}){short}"


def loss_curve(losses):
    """train_loss per step as dots, its moving mean as a line; labelled axes from 0."""
    from PIL import Image, ImageDraw

    width, height = CURVE_SIZE
    left, right, top, bottom = 70, 20, 56, 50
    canvas = Image.new("RGB", CURVE_SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = left, height - bottom, width - right, top
    if not losses:
        draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black")
        draw.text((x0 + 10, (y0 + y1) // 2), "no train_loss scalars were logged", fill="black")
        return canvas
    smoothed, window = smooth(losses)
    draw.text((10, 10), curve_title(len(losses), window), fill="black")
    finite = [v for v in losses if math.isfinite(v)] or [0.0]  # a nan or inf step is left out
    low = min(0.0, min(finite))
    ticks = y_ticks(max(finite) - low)
    span = ticks[-1] or 1.0

    def point(i, value):
        x = x0 + (x1 - x0) * (i / max(1, len(losses) - 1))
        return x, y0 - (y0 - y1) * ((value - low) / span)

    for tick in ticks:
        y = point(0, low + tick)[1]
        draw.line([(x0, y), (x1, y)], fill=(230, 230, 230))
        draw.text((8, y - 6), f"{low + tick:.3g}", fill="black")
    draw.line([(x0, y1), (x0, y0), (x1, y0)], fill="black")
    radius = 3 if len(losses) <= 100 else 1
    for x, y in (point(i, v) for i, v in enumerate(losses) if math.isfinite(v)):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(150, 180, 225))
    if window > 1:
        draw.line([point(i, v) for i, v in enumerate(smoothed) if math.isfinite(v)], fill=(20, 60, 160), width=2)
    draw.text((x0, y0 + 6), "1", fill="black")
    draw.text((x1 - 30, y0 + 6), str(len(losses)), fill="black")
    draw.text(((x0 + x1) // 2 - 15, y0 + 24), "step", fill="black")
    draw.text((8, y1 - 26), "train_loss", fill="black")
    return canvas


def main():
    args = parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    without, with_lora = render_pair(args)
    losses = logged_losses(Path(args.lora))
    largest, mean = difference(without, with_lora)
    note = difference_note(largest, mean, len(losses))
    compare = args.out / "validation_compare.png"
    side_by_side(without, with_lora, args.prompt, args.seed, note).save(compare)
    curve = args.out / "loss_curve.png"
    loss_curve(losses).save(curve)
    return {"ok": True, "compare": str(compare), "loss_curve": str(curve), "steps": len(losses),
            "last_loss": losses[-1] if losses else None, "image_size": list(without.size),
            "max_diff": largest, "mean_diff": round(mean, 4), "note": note,
            "seconds": round(time.monotonic() - started, 3)}


if __name__ == "__main__":
    report(main)
