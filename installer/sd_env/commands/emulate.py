"""`sd-env emulate -- CMD`: a command in the target with sd-env's emulated tpu device."""

from __future__ import annotations

import argparse

from sd_env.commands import common
from sd_env.errors import InputError
from sd_env.target import trainenv
from sd_env.verify import emulation
from sd_env.workflows import run


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("emulate", parents=parents.common,
                       help="run a command in the target with an emulated tpu device")
    p.add_argument("--device", help="ACCELERATE_TORCH_DEVICE for the command (default: tpu:0)")
    p.add_argument("--strict", action="store_true", help="the device refuses what the real plugin of the target's "
                   "era refuses (its strict profile; default: the manifest's [emulator] profile)")
    p.add_argument("--devices", type=int, choices=range(1, 9), metavar="N", help="emulate N devices, tpu:0 to "
                   "tpu:N-1 (SG_MAX_DEVICE_COUNT; default 1), with the \"sccl\" backend between processes")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command and its arguments")
    p.set_defaults(func=_cmd_emulate)


def _cmd_emulate(args: argparse.Namespace) -> int:
    """`sd-env run` with the emulated tpu on PYTHONPATH: the same environment, notes and exec."""
    man, paths, runner = common.setup(args, "emulate")
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise InputError("no command to run", "write it after --, e.g. sd-env emulate -- python train.py")
    python, inv = common.target(args, runner, paths, man)
    emu = emulation.build(runner, python, paths)
    device = args.device or "tpu:0"
    setup = emulation.settings(man, emu, args.strict)
    target = trainenv.build(inv, man.device, device, why="--device" if args.device else "sd-env emulate's default")
    target.env.update(emulation.environment(emu, device, setup))
    if args.devices:
        target.env["SG_MAX_DEVICE_COUNT"] = str(args.devices)
        target.notes.append(emulation.describe_devices(args.devices))
    target.notes.append(emulation.note(emu, device))
    target.notes.extend(emulation.describe(setup))
    run.exec_in(target, cmd, args._log)
    return 0  # not reached: exec_in replaces this process
