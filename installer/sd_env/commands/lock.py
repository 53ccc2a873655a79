"""`sd-env lock`: re-resolve the era lock from the manifest (needs uv)."""

from __future__ import annotations

import argparse
import time

from sd_env.commands import common
from sd_env.core import lockfile
from sd_env.errors import InputError
from sd_env.report import OK, Result, progress


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("lock", parents=parents.writes, help="re-resolve the era lock from the manifest (needs uv)")
    p.add_argument("--flavour", choices=("cpu", "pypi"), default="pypi",
                   help="which torch flavour to lock (default: pypi)")
    p.set_defaults(func=_cmd_lock)


def _cmd_lock(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "lock")
    if man.lock is None:
        raise InputError(f"{man.path}: no [lock] table", "add one (see manifests/sc7-sd14-lora.toml)")
    progress(f"resolving the {args.flavour} flavour of {man.name}")
    started = time.monotonic()
    out = lockfile.compile_lock(man, args.flavour, runner)
    lock = lockfile.read(out)
    listed = "" if args.flavour in man.lock.files else f"; listed in {man.path} [lock.files] {args.flavour}"
    done = Result("env", "lock", OK, f"wrote {out} ({len(lock.pins)} packages, all hashed{listed})",
                  time.monotonic() - started)
    return common.report("lock", [done], None, args, paths, flavour=args.flavour)
