"""`sd-env status`: what is pinned, patched, installed, drifted."""

from __future__ import annotations

import argparse
import dataclasses

from sd_env.commands import common
from sd_env.patching import status
from sd_env.report import dump_json, say, table
from sd_env.target import envs


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("status", parents=parents.common, help="show what is pinned, patched, installed, drifted")
    p.set_defaults(func=_cmd_status)


def _cmd_status(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "status")
    # The inventory as `run` keeps it: reused only while the target's files are as they were.
    found = envs.resolve(runner, args.python, paths.home, man.python, create=False, cache=paths.inventories)
    rows = status.collect(man, paths, runner, found.python, found.inventory)
    if args.json:
        args._reported = True
        dump_json("status", 0, {"home": str(paths.home), "components": [dataclasses.asdict(r) for r in rows],
                                "log": str(args._log)})
    else:
        table(f"sd-env status ({paths.home})", status.COLUMNS, [status.cells(r) for r in rows])
        for line in status.fixes(rows):
            say(line)
    return 0
