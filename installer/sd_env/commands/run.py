"""`sd-env run -- CMD` and `sd-env shell`: a command, or a shell, inside the target."""

from __future__ import annotations

import argparse
import sys

from sd_env.commands import common
from sd_env.workflows import run


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("run", parents=parents.device, help="run one command in the target environment "
                       "(sd-env run -- CMD ARGS...)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print what was set")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    target, log = common.target_env(args, "run")
    run.exec_in(target, cmd, log, quiet=args.quiet)
    return 0  # not reached: exec_in replaces this process


def add_shell(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("shell", parents=parents.device, help="a shell in the target environment with "
                       "the training variables set ($SHELL, else bash)")
    p.set_defaults(func=_cmd_shell)


def _cmd_shell(args: argparse.Namespace) -> int:
    target, log = common.target_env(args, "shell")
    if sys.stdin.isatty():
        target.notes.append("type `exit` to leave")
    run.exec_in(target, run.shell_argv(target.env), log)
    return 0
