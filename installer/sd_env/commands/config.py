"""`sd-env config`: the settings in force and where each came from."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sd_env.commands import common
from sd_env.core import config
from sd_env.errors import InputError
from sd_env.report import dump_json, say, table
from sd_env.system import paths as paths_mod


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("config", parents=parents.common, help="show the settings in force and where each came from")
    p.set_defaults(func=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        where: Path | None = args.manifest or common.default_manifest()
    except InputError:
        where = None  # no project: only the user's file
    settings = config.resolve({}, where)
    files = ([paths_mod.project_config(where)] if where else []) + [paths_mod.user_config()]
    if args.json:
        args._reported = True
        dump_json("config", 0, {"settings": {k: dataclasses.asdict(v) for k, v in settings.items()},
                                "files": [{"path": str(f), "exists": f.is_file()} for f in files]})
        return 0
    table("sd-env config (flag > environment > project > user)", ("key", "value", "from"),
          [[s.key, s.value or "(not set)", s.source] for s in settings.values()])
    for f in files:
        say(f"{'read' if f.is_file() else 'absent'}: {f}")
    return 0
