"""`sd-env rehearse`: the tutorial's training with SD 1.4's full network on the emulated tpu."""

from __future__ import annotations

import argparse
from pathlib import Path

from sd_env.commands import common
from sd_env.report import dump_json, exit_code, say, table
from sd_env.workflows import rehearse


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("rehearse", parents=parents.common, help="the tutorial's training on the emulated tpu with "
                       "SD 1.4's full network (random weights): does it fit one chip, does every op run there")
    rehearse_flags(p)
    p.set_defaults(func=_cmd_rehearse)


def rehearse_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, default=512, help="training resolution (tutorial: 512)")
    p.add_argument("--batch", type=int, default=1, help="--train_batch_size (tutorial: 1)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "both"), default="both",
                   help="fp32 (no), fp16, or both one after the other (default)")
    p.add_argument("--steps", type=int, default=2, help="training steps per precision (at least 2: the first "
                   "one's time includes loading the models)")
    p.add_argument("--capacity", metavar="SIZE", help="one chip's memory, e.g. 16G (default: "
                   "$SD_ENV_EMULATED_MEMORY, the manifest's [emulator] memory, else 16G)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="the script's --gradient_checkpointing "
                   "(diffusers v0.20.0's LoRA example ignores it: sd-env says so)")
    p.add_argument("--search", action="store_true", help="a precision that runs out of memory in training is run "
                   "again with --gradient-checkpointing, 3/4 and 1/2 the resolution, then batch 1, until one fits "
                   "(each a run as long as the first; they inform, the exit code is the asked runs')")
    p.add_argument("--model", type=Path, help="a diffusers model folder of your own instead of SD 1.4's "
                   "architecture with random weights")
    p.add_argument("--data", type=Path, help="images + metadata.jsonl (default: four drawn shapes)")
    p.add_argument("--output", type=Path, default=Path("sd-env-rehearsal"), help="where the runs write "
                   "(default: ./sd-env-rehearsal)")
    p.add_argument("--keep-model", action="store_true", help="keep the built model (4 GiB) in OUTPUT/sd14-arch "
                   "for --model OUTPUT/sd14-arch/model next time (default: deleted; rebuilding takes about 35 s)")
    p.add_argument("--script", type=Path, help="train_text_to_image_lora.py to run (default: the managed "
                   "diffusers checkout's)")


def _cmd_rehearse(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "rehearse")
    python, _inv = common.target(args, runner, paths, man)
    both = ("no", "fp16") if args.mixed_precision == "both" else (args.mixed_precision,)
    opts = rehearse.Options(args.output, args.resolution, args.batch, both, args.steps, args.capacity,
                            args.model, args.data, args.keep_model, args.gradient_checkpointing, args.script,
                            args.search)
    measured, about = rehearse.run(man, paths, runner, python, opts)
    code = exit_code(m for m in measured if not m.setting)  # --search's runs say what fits, they do not fail
    if args.json:
        args._reported = True
        dump_json("rehearse", code, rehearse.json_body(measured, about, opts))
        return code
    table(f"sd-env rehearse: {opts.resolution} x {opts.resolution}, batch {opts.batch}, {about['capacity']}",
          rehearse.COLUMNS, rehearse.rows(measured))
    for line in rehearse.advice(measured, opts, about.get("script_checkpoints", True)):
        say(f"- {line}")
    say("seconds per step and host RAM are the emulation's, on this CPU: not the card's")
    if about.get("kept"):
        say(f"model kept: --model {about['model']}")
    return code
