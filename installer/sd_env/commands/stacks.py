"""`sd-env stacks`: the shipped stacks (manifests) and what each is for."""

from __future__ import annotations

import argparse

from sd_env.commands import common
from sd_env.core import stacks


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("stacks", help="list the shipped stacks (manifests) and what each is for")
    p.add_argument("--json", action="store_true", help="print a versioned JSON report")
    p.set_defaults(func=_cmd_stacks)


def _cmd_stacks(args: argparse.Namespace) -> int:
    stacks.render([stacks.describe(m) for m in stacks.shipped()], args.json)
    return 0
