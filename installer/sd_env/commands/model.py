"""`sd-env model lock|fetch`: the manifest's model (and dataset) pinned by revision and sha256."""

from __future__ import annotations

import argparse

from sd_env.commands import common
from sd_env.target import envs
from sd_env.workflows import models


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("model", help="the manifest's model (and dataset) pinned by revision and sha256: "
                       "lock them, fetch them")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    m = msub.add_parser("lock", parents=parents.writes, help="resolve the exact files of [model] (and [dataset]) "
                        "at their pinned commit through the Hub's API (HF_ENDPOINT, HF_TOKEN) into "
                        "MANIFEST.model.lock.json")
    m.set_defaults(func=_cmd_lock)
    m = msub.add_parser("fetch", parents=parents.writes, help="download exactly the locked files (resumable, "
                        "through HF_ENDPOINT's mirror if set), check each sha256, lay them out as a Hub cache "
                        "snapshot; a second run fetches nothing")
    m.add_argument("--only", choices=("model", "dataset"), help="fetch only the model or only the dataset")
    m.set_defaults(func=_cmd_fetch)


def _cmd_lock(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "model-lock")
    python, _inv = common.target(args, runner, paths, man, "no target environment to ask the Hub with")
    _lock, results = models.lock(man, paths, runner, python)
    return common.report("model lock", results, None, args, paths, lock=str(man.model_lock))


def _cmd_fetch(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "model-fetch")
    found = envs.resolve(runner, args.python, paths.home, man.python, create=False)  # needed only to download
    results = models.fetch(man, paths, runner, found.python, args.only or "all")
    return common.report("model fetch", results, None, args, paths)

