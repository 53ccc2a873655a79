"""`sd-env run-diff A B`: what differs between two training runs' records."""

from __future__ import annotations

import argparse
from pathlib import Path

from sd_env.commands import common
from sd_env.core import runrecord
from sd_env.report import dump_json, say


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("run-diff", help="what differs between two training runs' records (sd-env-run.json, "
                       "written by `sd-env train` beside its output)")
    p.add_argument("a", type=Path, metavar="A", help="a run record, or the output folder holding one")
    p.add_argument("b", type=Path, metavar="B")
    p.add_argument("--json", action="store_true", help="print a versioned JSON report")
    p.set_defaults(func=_cmd_run_diff)


def _cmd_run_diff(args: argparse.Namespace) -> int:
    a, b = runrecord.load(args.a), runrecord.load(args.b)
    found = runrecord.diff(a, b)
    code = 1 if found.inputs or found.outcome else 0
    if args.json:
        args._reported = True
        dump_json("run-diff", code, {"a": str(args.a), "b": str(args.b), "identical": code == 0,
                                     "inputs": found.inputs, "outcome": found.outcome, "circumstances": found.where})
        return code
    say("\n".join(runrecord.render(found)))
    return code
