"""Probe helper: build a tiny Stable Diffusion pipeline and a 4-image dataset.

The real SD 1.4 weights are 4 GB on the Hugging Face Hub, which users' machines
often cannot reach; this model has the same structure (CLIP tokenizer and text
encoder, cross-attention UNet, KL VAE, DDPM scheduler), so the v0.20.0 LoRA
script and our LoRA probes accept it, and it is built from nothing in seconds.

    python tiny_sd.py --out DIR   ->   DIR/model (save_pretrained layout), DIR/data

Seeded and deterministic. Built in a temporary folder next to DIR, then renamed,
so an interrupted build never leaves a half model that looks complete; a marker
file says a build is complete. Prints one JSON object on its last stdout line.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _result import report

# Bump when the recipe changes, so an old cached build is replaced.
RECIPE = 1
MARKER = "tiny-sd.json"
CAPTIONS = {
    "red_square.png": "a red square",
    "blue_circle.png": "a blue circle",
    "green_triangle.png": "a green triangle",
    "yellow_cross.png": "a yellow cross",
}
# A few BPE merges so that common caption words are single tokens; everything
# else falls back to the 512 byte-level symbols.
MERGES = ["r e", "re d</w>", "b l", "bl u", "blu e</w>", "g r", "gr e", "gre e", "gree n</w>"]


def write_tokenizer_files(folder, size=None):
    """vocab.json and merges.txt; `size` pads the vocabulary with unused tokens to that many ids
    (the specials stay the last two, as in CLIP's own)."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())  # the 256 byte-level symbols, in CLIP's order
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in MERGES]
    vocab = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    while size and len(vocab) < size - 2:
        vocab[f"<|unused{len(vocab)}|>"] = len(vocab)
    # CLIP pools the text embedding at argmax(input_ids), i.e. it assumes
    # <|endoftext|> has the highest id: keep the two specials last.
    for token in ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    # CLIPTokenizer skips the first line of merges.txt (the version header).
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    return vocab


def build_model(folder, scratch):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_dir = scratch / "vocab"
    vocab_dir.mkdir()
    vocab = write_tokenizer_files(vocab_dir)
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77)

    # Reseed before each model so each one's weights do not depend on the others.
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    ))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    # steps_offset=1 and clip_sample=False as in SD 1.4's own scheduler config (the
    # pipeline would force them anyway, with two FutureWarnings).
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, steps_offset=1, clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))


def build_data(folder, size=64):
    """The four captioned shapes, drawn at `size` pixels (64 for the tiny model; the script resizes)."""
    from PIL import Image, ImageDraw

    folder.mkdir()
    s = size / 64
    shapes = {
        "red_square.png": ((220, 30, 30), lambda d, c: d.rectangle([16 * s, 16 * s, 47 * s, 47 * s], fill=c)),
        "blue_circle.png": ((30, 60, 220), lambda d, c: d.ellipse([12 * s, 12 * s, 51 * s, 51 * s], fill=c)),
        "green_triangle.png": ((30, 180, 60), lambda d, c: d.polygon([(32 * s, 8 * s), (56 * s, 54 * s),
                                                                       (8 * s, 54 * s)], fill=c)),
        "yellow_cross.png": ((230, 210, 30), lambda d, c: (d.rectangle([26 * s, 8 * s, 37 * s, 55 * s], fill=c),
                                                           d.rectangle([8 * s, 26 * s, 55 * s, 37 * s], fill=c))),
    }
    lines = []
    for name, caption in CAPTIONS.items():
        image = Image.new("RGB", (size, size), (245, 245, 245))
        fill, draw = shapes[name]
        draw(ImageDraw.Draw(image), fill)
        image.save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def is_complete(out):
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8")).get("recipe") == RECIPE
    except (OSError, ValueError):
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    out = args.out.resolve()
    started = time.monotonic()
    result = {"ok": True, "model": str(out / "model"), "data": str(out / "data"), "cached": False}
    if is_complete(out):
        result.update(cached=True, seconds=round(time.monotonic() - started, 3))
        return result
    if out.exists() and not (out / MARKER).exists() and any(out.iterdir()):
        # Not ours (ours always carry the marker): never delete someone's files.
        raise FileExistsError(f"{out} exists, is not empty and is not a tiny-sd build")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=str(out.parent)))
    try:
        build_model(staging / "model", staging)
        shutil.rmtree(staging / "vocab")
        build_data(staging / "data")
        (staging / MARKER).write_text(json.dumps({"recipe": RECIPE}) + "\n", encoding="utf-8")
        old = None
        if out.exists():  # empty, or an older recipe of ours: move it aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=str(out.parent)))
            os.replace(out, old / "build")
        try:
            os.replace(staging, out)
        except OSError:
            if not is_complete(out):  # another build did not win the race either
                raise
            result["cached"] = True  # a concurrent build finished first; keep it
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


if __name__ == "__main__":
    report(main)
