"""Probe helper: Stable Diffusion 1.4's architecture with random weights, in diffusers' layout.

For `sd-env rehearse`: the published SD 1.4 configuration (UNet blocks 320/640/1280/1280,
cross-attention 768, 8 heads; VAE 128/256/512/512; CLIP ViT-L/14 text encoder, 12 layers,
width 768; a tokenizer with CLIP's 49408 ids and 77 tokens; SD 1.4's PNDM scheduler), made
here from a fixed seed, nothing downloaded. SD 1.5 has the same architecture. The weights
are random: the memory, time and ops of a training step are the real network's, the
pictures are noise.

    python sd14_arch.py --out DIR [--data-size 512] [--data-only]   ->   DIR/model, DIR/data

One model at a time is built, saved and dropped (never two copies of the weights), as torch
.bin files: safetensors 0.3's save_file copies every tensor into one bytes object first.
Built in a temporary folder next to DIR, then renamed. Prints one JSON object.
"""

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _result import report
from tiny_sd import build_data, write_tokenizer_files

RECIPE = 1
MARKER = "sd14-arch.json"
CLIP_VOCAB = 49408  # CLIP's ids; <|startoftext|> 49406 and <|endoftext|> 49407, as in SD 1.4's tokenizer


def log(started, what):
    print(f"[{time.monotonic() - started:6.1f} s] {what}", file=sys.stderr, flush=True)


def parameters(model):
    return sum(p.numel() for p in model.parameters())


def build_model(folder, scratch, started):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    counts = {}
    vocab = write_tokenizer_files(scratch, size=CLIP_VOCAB)
    tokenizer = CLIPTokenizer(str(scratch / "vocab.json"), str(scratch / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(str(folder / "tokenizer"))

    def save(name, make):
        torch.manual_seed(0)  # each model's weights independent of the others'
        model = make()
        counts[name] = parameters(model)
        log(started, f"{name}: {counts[name] / 1e6:.1f}M parameters built; saving")
        model.save_pretrained(str(folder / name), safe_serialization=False)
        del model
        gc.collect()

    save("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"])))
    save("vae", lambda: AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4))
    save("unet", lambda: UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    scheduler.save_pretrained(str(folder / "scheduler"))
    # What StableDiffusionPipeline.save_pretrained writes, without building the pipeline (and
    # without a safety checker, as the tiny model).
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.20.0",
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return counts


def size_of(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data-size", type=int, default=512, help="pixels of the dataset's images")
    parser.add_argument("--data-only", action="store_true", help="only DIR/data (for a model of the user's)")
    args = parser.parse_args()
    out = args.out.resolve()
    started = time.monotonic()
    if args.data_only:
        if not (out / "data" / "metadata.jsonl").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(out / "data", ignore_errors=True)
            build_data(out / "data", args.data_size)
        return {"ok": True, "data": str(out / "data"), "seconds": round(time.monotonic() - started, 3)}
    if (out / MARKER).exists():
        done = json.loads((out / MARKER).read_text(encoding="utf-8"))
        if done.get("recipe") == RECIPE:
            return {**done, "ok": True, "cached": True, "seconds": round(time.monotonic() - started, 3)}
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists, is not empty and is not an sd14-arch build")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=str(out.parent)))
    try:
        (staging / "vocab").mkdir()
        counts = build_model(staging / "model", staging / "vocab", started)
        shutil.rmtree(staging / "vocab")
        build_data(staging / "data", args.data_size)
        result = {"recipe": RECIPE, "model": str(out / "model"), "data": str(out / "data"), "parameters": counts,
                  "bytes": size_of(staging / "model"),
                  "build_seconds": round(time.monotonic() - started, 3),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        (staging / MARKER).write_text(json.dumps(result) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)  # an empty folder, or an older recipe of ours
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(started, f"built {sum(counts.values()) / 1e6:.0f}M parameters, {result['bytes'] / 2**30:.2f} GiB")
    return {**result, "ok": True, "cached": False, "seconds": round(time.monotonic() - started, 3)}


if __name__ == "__main__":
    report(main)
