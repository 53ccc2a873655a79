"""`sd-env verify`: check the environment and prove it trains (on the emulated device with --emulate)."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from pathlib import Path

from sd_env.commands import common
from sd_env.errors import InputError
from sd_env.fleet import hostfacts
from sd_env.report import LiveTable, dump_json, exit_code, say
from sd_env.system import runner as runner_module
from sd_env.verify import checks as verify
from sd_env.verify import readiness
from sd_env.verify.context import COLUMNS, Context, cells, local_inputs
from sd_env.verify.environment import environment_block


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("verify", parents=parents.common, help="check the environment and prove it trains")
    p.add_argument("--quick", action="store_true", help="skip the LoRA training step and inference")
    p.add_argument("--mixed-precision", choices=("no", "fp16"), default="no",
                   help="precision of the LoRA step (fp16 needs the card: n/a on the CPU)")
    p.add_argument("--emulate", action="store_true",
                   help="run the smoke test, the LoRA step (fp16 and fp32) and inference on sd-env's emulated "
                   "torch_tpu (no card needed; built on first use, never installed)")
    p.add_argument("--strict", action="store_true",
                   help="with --emulate: the device refuses what the real plugin of the target's era refuses "
                   "(its strict profile, e.g. int64 on torch_tpu 2.8; default: the manifest's [emulator] profile)")
    p.add_argument("--devices", type=int, choices=range(1, 9), default=1, metavar="N",
                   help="add two rows on tpu:0 to tpu:N-1 (the card's, or emulated ones with --emulate): an "
                   "all-reduce (\"sccl\") and 2 data-parallel LoRA steps through accelerate's launcher (those need "
                   "a stack with accelerate's multi-device patch, e.g. sc7-sd14-lora-multi)")
    p.add_argument("--model", type=Path, metavar="DIR", help="a local diffusers model folder for the LoRA step "
                   "and inference (default: a tiny model built locally)")
    p.add_argument("--data", type=Path, metavar="DIR", help="a local imagefolder (images + metadata.jsonl) for "
                   "the LoRA step (default: a tiny dataset built locally)")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "verify")
    model, data = local_inputs(args.model, args.data)
    python, inv = common.target(args, runner, paths, man, "nothing to verify")
    if args.strict and not args.emulate:
        raise InputError("--strict is for the emulated device", "add --emulate")
    ctx = Context(man, paths, runner, python, quick=args.quick, mixed_precision=args.mixed_precision,
                         model=model, data=data, inventory=inv, strict=args.strict, devices=args.devices)
    title = f"sd-env verify ({man.name}, {python})" + (" on the emulated tpu" if args.emulate else "")
    if args.emulate:
        from sd_env.verify import emulated as verify_emulated  # builds a C++ extension: only loaded when asked for

        run_checks = verify_emulated.run
    else:
        run_checks = verify.run
    with LiveTable(title, COLUMNS, every=runner_module.HEARTBEAT, rows=not args.json) as live:
        checks = run_checks(ctx, started=live.start, finished=lambda check: live.add(cells(check)))
    code = exit_code(checks)
    block = environment_block(ctx)
    if args.json:
        args._reported = True
        dump_json("verify", code, {"host": socket.gethostname(), "python": str(python), "device": ctx.device,
                                   "emulated": ctx.emulated, "checks": [dataclasses.asdict(c) for c in checks],
                                   "facts": hostfacts.collect(ctx), "environment": block.splitlines(),
                                   **hostfacts.provenance(paths), "log": str(args._log)})
        return code
    say("\nFor bug reports (copy and paste):\n" + block)
    verdict, *more = readiness.verify_summary(checks, paths, quick=args.quick, emulated=args.emulate)
    say("\n".join([f"\n{verdict} (log: {args._log})", *more]))
    return code
