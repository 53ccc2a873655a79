"""Probe: a few LoRA training steps, the same as the installed diffusers' example.

Used when examples/text_to_image/train_text_to_image_lora.py is not available
(diffusers installed from its PyPI sdist has no examples/). Written for sd-env,
not copied: it makes the same library calls as the script's training step, with
the script's defaults (rank 4, AdamW lr 1e-4, constant schedule, grad clip 1.0,
epsilon prediction, no SNR weighting), and what sd-env's patch of that script
changes. Two forms, by how the installed release's example makes its LoRA layers:
- up to 0.24.x, attention processors (diffusers v0.20.0's example): LoRAAttnProcessor
  on every attention, with the patch's `AttnProcsLayers(...).to(accelerator.device)`;
- from 0.25.0, peft (diffusers v0.29.2's example; LoRAAttnProcessor is gone from 0.29):
  `unet.add_adapter(LoraConfig(...))` on the UNet already on the device, the trainable
  parameters cast to fp32 in fp16, the weights saved with `save_lora_weights`, and the
  patch's int32 timesteps (int64 is unsupported on the SC7).

    python lora_step.py --model DIR --data DIR --out DIR --device tpu:0 --steps 2

Prints one JSON object on its last stdout line; logs go to stderr.
"""

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from _result import report


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder (tiny_sd.py's model)")
    parser.add_argument("--data", required=True, help="an imagefolder: images + metadata.jsonl (file_name, text)")
    parser.add_argument("--out", required=True, help="where unet.save_attn_procs writes the LoRA weights")
    parser.add_argument("--device", default="cpu", help="cpu, or tpu:0 for a Sophgo card")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def same_device(requested, actual):
    """tpu and tpu:0 are the same request; cpu must not silently become cuda, nor tpu:0 cpu."""
    if requested.type != actual.type:
        return False
    return requested.index is None or actual.index is None or requested.index == actual.index


PEFT_FROM = (0, 25, 0)  # the first diffusers whose example trains its LoRA layers with peft


def uses_peft(version):
    """Whether diffusers `version` ("0.29.2", "0.30.0.dev0") is of the peft form."""
    numbers = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers) >= PEFT_FROM


def lora_processors(unet, rank):
    # The script's sizing: attn1 is self-attention (no cross_attention_dim);
    # hidden_size follows the block's channels, reversed for the up blocks.
    from diffusers.models.attention_processor import LoRAAttnProcessor

    channels = unet.config.block_out_channels
    processors = {}
    for name in unet.attn_processors:
        cross_attention_dim = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden_size = channels[-1]
        elif name.startswith("up_blocks"):
            hidden_size = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:  # down_blocks
            hidden_size = channels[int(name[len("down_blocks.")])]
        processors[name] = LoRAAttnProcessor(hidden_size=hidden_size, cross_attention_dim=cross_attention_dim,
                                             rank=rank)
    return processors


def add_peft_adapter(unet, mixed_precision, rank):
    """diffusers v0.29.2's example: peft LoRA layers on the attention projections of the UNet, which is on
    the device already (peft makes them where the layer they wrap is), trainable parameters in fp32."""
    import torch
    from peft import LoraConfig

    for param in unet.parameters():
        param.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if mixed_precision == "fp16":
        try:
            from diffusers.training_utils import cast_training_params
        except ImportError:  # 0.25.x: the example casts them itself
            for param in unet.parameters():
                if param.requires_grad:
                    param.data = param.to(torch.float32)
        else:
            cast_training_params(unet, dtype=torch.float32)


def save_peft_lora(unet, out):
    """The example's save: the adapter's state in diffusers' key format, as pytorch_lora_weights.safetensors."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet)
    try:
        from diffusers.utils import convert_state_dict_to_diffusers
    except ImportError:  # 0.25.x saves peft's keys as they are
        pass
    else:
        state = convert_state_dict_to_diffusers(state)
    StableDiffusionPipeline.save_lora_weights(save_directory=out, unet_lora_layers=state, safe_serialization=True)


def count_tensors(out):
    """The weights file written, its tensor count, the LoRA ranks and the largest |up| weight (the up/B
    matrices start at 0: still 0 means the optimizer never moved them)."""
    files = sorted(Path(out).glob("pytorch_lora_weights.*"))
    if not files:
        return None, 0, [], None
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(files[0]))
    else:
        import torch

        tensors = torch.load(str(files[0]), map_location="cpu")
    # "lora.down/up.weight" in diffusers' key format, "lora_A/B.weight" in peft's.
    ranks = sorted({int(t.shape[0]) for k, t in tensors.items() if k.endswith(("down.weight", "lora_A.weight"))})
    ups = [float(t.float().abs().max()) for k, t in tensors.items() if k.endswith(("up.weight", "lora_B.weight"))]
    return str(files[0]), len(tensors), ranks, max(ups) if ups else None


def main():
    args = parse_args()
    started = time.monotonic()
    device_arg = args.device
    if device_arg == "cpu":
        # A stray ACCELERATE_TORCH_DEVICE from the caller's shell must not move a CPU check.
        os.environ.pop("ACCELERATE_TORCH_DEVICE", None)
    else:
        # accelerate 0.16.0 reads this in AcceleratorState: the only way to pick "tpu:0".
        os.environ["ACCELERATE_TORCH_DEVICE"] = device_arg

    import torch

    try:
        import torch_tpu  # registers the "tpu" device; must precede Accelerator()
    except ImportError:
        torch_tpu = None
    if device_arg.startswith("tpu") and torch_tpu is None:
        raise RuntimeError(f"--device {device_arg} needs Sophgo's torch_tpu, which is not importable here")
    import diffusers
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from datasets import load_dataset
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from torchvision import transforms
    from transformers import CLIPTextModel, CLIPTokenizer

    # cpu=True keeps a CPU request on the CPU even on a machine with CUDA.
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=device_arg == "cpu")
    set_seed(args.seed)

    noise_scheduler = DDPMScheduler.from_pretrained(args.model, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(args.model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(args.model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(args.model, subfolder="unet")
    for frozen in (unet, vae, text_encoder):
        frozen.requires_grad_(False)

    # As the script: frozen weights in the mixed-precision dtype, LoRA layers in fp32.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for frozen in (unet, vae, text_encoder):
        frozen.to(accelerator.device, dtype=weight_dtype)

    peft = uses_peft(diffusers.__version__)
    if peft:
        add_peft_adapter(unet, accelerator.mixed_precision, rank=4)
        trained = unet  # what accelerator.prepare wraps: the example prepares the UNet
        params = [p for p in unet.parameters() if p.requires_grad]
    else:
        from diffusers.loaders import AttnProcsLayers

        unet.set_attn_processor(lora_processors(unet, rank=4))
        trained = AttnProcsLayers(unet.attn_processors).to(accelerator.device)
        params = list(trained.parameters())

    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    # The script's imagefolder call (data_files with "**"); a private cache so the
    # probe leaves nothing in ~/.cache and never reads a stale copy.
    cache = tempfile.TemporaryDirectory(prefix="sd-env-lora-step-")
    dataset = load_dataset("imagefolder", data_files={"train": os.path.join(args.data, "**")}, cache_dir=cache.name)
    image_column, caption_column = dataset["train"].column_names[:2]
    train_transforms = transforms.Compose([
        transforms.Resize(args.resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(args.resolution),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])

    def preprocess(examples):
        examples["pixel_values"] = [train_transforms(image.convert("RGB")) for image in examples[image_column]]
        examples["input_ids"] = tokenizer(examples[caption_column], max_length=tokenizer.model_max_length,
                                          padding="max_length", truncation=True, return_tensors="pt").input_ids
        return examples

    def collate(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]).to(
                memory_format=torch.contiguous_format).float(),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
        }

    loader = torch.utils.data.DataLoader(dataset["train"].with_transform(preprocess), shuffle=True,
                                         collate_fn=collate, batch_size=1, num_workers=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=args.steps)
    trained, optimizer, loader, lr_scheduler = accelerator.prepare(trained, optimizer, loader, lr_scheduler)
    if peft:
        unet = trained  # as the example: the prepared UNet trains (its forward as accelerate set it up)

    losses = []
    loss_devices, trained_devices = set(), set()  # measured, not assumed: what verify's row names
    unet.train()
    while len(losses) < args.steps:  # as many passes over the 4 images as --steps needs
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                # The peft form's patch draws int32 timesteps (int64 is unsupported on the SC7); v0.20.0's, int64.
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                          device=latents.device, dtype=torch.int32 if peft else torch.int64)
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
                loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")  # epsilon target
                loss_devices.add(str(loss.device))
                trained_devices.update(str(p.device) for group in optimizer.param_groups for p in group["params"])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # The peft example passes its `filter` of the trainable parameters, already used up by
                    # the optimizer (so it clips nothing); the parameters themselves are what it means.
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            losses.append(loss.detach().item())
            print(f"step {len(losses)} loss {losses[-1]:.6f}", file=sys.stderr)
            if len(losses) >= args.steps:
                break

    accelerator.wait_for_everyone()
    if peft:
        save_peft_lora(accelerator.unwrap_model(unet.to(torch.float32)), args.out)
    else:
        unet.to(torch.float32).save_attn_procs(args.out)
    cache.cleanup()
    weights, tensors, ranks, up_max = count_tensors(args.out)
    finite = bool(losses) and all(math.isfinite(x) for x in losses)
    wanted = torch.device(device_arg)
    right_device = all(same_device(wanted, torch.device(d)) for d in {str(accelerator.device)} | loss_devices |
                       trained_devices)
    return {
        "ok": finite and right_device and tensors > 0,
        "device": str(accelerator.device),  # the accelerator's; where the work ran is in the two below
        "loss_devices": sorted(loss_devices),
        "trained_devices": sorted(trained_devices),
        "requested_device": device_arg,
        "torch_tpu": torch_tpu is not None,
        "mixed_precision": accelerator.mixed_precision,
        "lora": "peft" if peft else "attention processors",
        "diffusers": diffusers.__version__,
        "losses": losses,
        "finite": finite,
        "weights": weights,
        "tensors": tensors,
        "ranks": ranks,
        "up_max": up_max,
        "seconds": round(time.monotonic() - started, 3),
    }


if __name__ == "__main__":
    report(main)
