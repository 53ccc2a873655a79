"""The command line of `sd-env model lock|fetch` and `sd-env run-diff` (cli.py calls `add`).

Kept apart so cli.py stays a table of commands; the helpers it shares (`_setup`, `_target`,
`_report`) are reached through the module at call time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sd_env.core import runrecord
from sd_env.report import dump_json, say
from sd_env.workflows import models


def add(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, writes: argparse.ArgumentParser) -> None:
    p = sub.add_parser("model", help="the manifest's model (and dataset) pinned by revision and sha256: "
                       "lock them, fetch them")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    m = msub.add_parser("lock", parents=[common, writes], help="resolve the exact files of [model] (and [dataset]) "
                        "at their pinned commit through the Hub's API (HF_ENDPOINT, HF_TOKEN) into "
                        "MANIFEST.model.lock.json")
    m.set_defaults(func=_cmd_lock)
    m = msub.add_parser("fetch", parents=[common, writes], help="download exactly the locked files (resumable, "
                        "through HF_ENDPOINT's mirror if set), check each sha256, lay them out as a Hub cache "
                        "snapshot; a second run fetches nothing")
    m.add_argument("--only", choices=("model", "dataset"), help="fetch only the model or only the dataset")
    m.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("run-diff", help="what differs between two training runs' records (sd-env-run.json, "
                       "written by `sd-env train` beside its output)")
    p.add_argument("a", type=Path, metavar="A", help="a run record, or the output folder holding one")
    p.add_argument("b", type=Path, metavar="B")
    p.add_argument("--json", action="store_true", help="print a versioned JSON report")
    p.set_defaults(func=_cmd_run_diff)


def _cmd_lock(args: argparse.Namespace) -> int:
    from sd_env import cli

    man, paths, runner = cli._setup(args, "model-lock")
    python, _inv = cli._target(args, runner, paths, man, "no target environment to ask the Hub with")
    _lock, results = models.lock(man, paths, runner, python)
    return cli._report("model lock", results, None, args, paths, lock=str(man.model_lock))


def _cmd_fetch(args: argparse.Namespace) -> int:
    from sd_env import cli
    from sd_env.target import envs

    man, paths, runner = cli._setup(args, "model-fetch")
    found = envs.resolve(runner, args.python, paths.home, man.python, create=False)  # needed only to download
    results = models.fetch(man, paths, runner, found.python, args.only or "all")
    return cli._report("model fetch", results, None, args, paths)


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
