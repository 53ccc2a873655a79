"""`sd-env train`: the tutorial's LoRA fine-tuning, then pictures and a run record."""

from __future__ import annotations

import argparse
from pathlib import Path

from sd_env.commands import common
from sd_env.report import say
from sd_env.workflows import train


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("train", parents=parents.device, help="the tutorial's LoRA fine-tuning on the pinned "
                       "(or a local) model and a local dataset, then pictures and a run record (sd-env train "
                       "[--model DIR] --data DIR [-- SCRIPT ARGS])")
    p.add_argument("--model", help="a diffusers Stable Diffusion folder (model_index.json) (default: the "
                   "manifest's pinned [model], fetched by `sd-env model fetch` and checked against its lock)")
    p.add_argument("--data", type=Path, help="images + metadata.jsonl (file_name, text), or a saved Hugging Face "
                   "dataset (default: the manifest's pinned [dataset], if any)")
    p.add_argument("--check", action="store_true", help="only check that train can start (the training script, "
                   "the target, and --model/--data when given) and say what is missing; trains nothing")
    p.add_argument("--output", type=Path, default=Path("sd-env-lora"), help="the LoRA output folder "
                   "(default: ./sd-env-lora)")
    p.add_argument("--mixed-precision", choices=("no", "fp16"), help="the tutorial's fp32 (no) or fp16 run")
    p.add_argument("--devices", metavar="LIST", help="train on several devices, one process each through accelerate's "
                   "launcher: 0,1 (tpu:0 and tpu:1) or all; needs the multi-device patch (-m sc7-sd14-lora-multi)")
    p.add_argument("--emulate", action="store_true", help="train on sd-env's emulated tpu (no card needed; with "
                   "--devices, as many emulated devices as it names, or $SG_MAX_DEVICE_COUNT)")
    p.add_argument("--resolution", help="training resolution (tutorial: 512)")
    p.add_argument("--max-train-steps", help="stop after N steps (default: the tutorial's 10 epochs)")
    p.add_argument("--validation-prompt", help="tutorial: \"cute dragon creature\"")
    p.add_argument("--seed", help="tutorial: 42")
    p.add_argument("--script", type=Path, help="train_text_to_image_lora.py to run (default: the managed "
                   "diffusers checkout's)")
    p.add_argument("--no-pictures", action="store_true", help="skip the with/without image and loss curve")
    p.add_argument("--inference-steps", type=int, default=30, help="steps for sd-env's with/without image (30); "
                   "the script's own validation always takes 30 (see --validation-images)")
    p.add_argument("--validation-images", type=int, metavar="N", help="images the script draws for validation "
                   "after each epoch and at the end (default: its 4, of 30 steps each); 0: no validation")
    p.add_argument("extra", nargs=argparse.REMAINDER, metavar="-- SCRIPT ARGS",
                   help="more script arguments; they replace the tutorial's")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "train")
    python, inv = common.target(args, runner, paths, man)
    if args.check:
        say(train.check(man, paths, args.script, args.model, args.data))
        return 0
    flags = {"--mixed_precision": args.mixed_precision, "--resolution": args.resolution,
             "--max_train_steps": args.max_train_steps, "--validation_prompt": args.validation_prompt,
             "--seed": args.seed}
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    opts = train.Options(args.model, args.data, args.output, device=args.device, devices=args.devices,
                         emulate=args.emulate, script=args.script,
                         pictures=not args.no_pictures, inference_steps=args.inference_steps,
                         validation_images=args.validation_images,
                         settings={k: v for k, v in flags.items() if v}, extra=extra)
    outcome = train.run(man, paths, runner, python, opts, inv)
    say(train.summary(outcome))
    return 0
