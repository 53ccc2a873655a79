"""`sd-env repatch`: restore patched components, or port their patches to another release."""

from __future__ import annotations

import argparse

from sd_env.commands import common
from sd_env.errors import InputError, SdEnvError
from sd_env.patching import sources
from sd_env.workflows import install, repatch


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("repatch", parents=parents.writes,
                       help="restore patched components, or port patches to a release")
    p.add_argument("--to", metavar="NAME==VERSION", help="move a component to another release and port its patches")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--continue", dest="resume", action="store_true",
                       help="go on after fixing a conflict in the work tree")
    group.add_argument("--abort", action="store_true", help="drop the repatch in progress; nothing else changes")
    p.add_argument("--fuzz", type=int, default=0, metavar="N",
                   help="allow hunks whose context matches only partly (off by default; needs --accept)")
    p.add_argument("--accept", action="store_true", help="accept fuzzed ports or a resolution that changed "
                   "added lines")
    p.add_argument("--git-mirror", metavar="PREFIX", default=None,
                   help=f"as for install (also ${sources.ENV_MIRROR})")
    p.add_argument("--no-sdist-fallback", action="store_true", help="as for install")
    p.set_defaults(func=_cmd_repatch)


def _cmd_repatch(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "repatch")
    if args.abort:
        try:
            return common.report("repatch", [repatch.abort(paths)], None, args, paths)
        except SdEnvError as exc:
            return common.report("repatch", [], exc, args, paths)
    python, _inv = common.target(args, runner, paths, man, "no target environment to repatch")
    opts = install.Options(python, mirror=args.git_mirror, sdist_fallback=not args.no_sdist_fallback)
    session = repatch.load_session(paths)
    results: list = []
    error: SdEnvError | None = None
    try:
        finishing = session is not None and session.phase == "finishing"
        same = session is not None and args.to == f"{session.component}=={session.to_version}"
        if args.resume or (finishing and (not args.to or same)):  # re-running the killed command finishes it
            results = repatch.resume(man, paths, runner, opts, accept=args.accept)
        elif args.to:
            name, sep, version = args.to.partition("==")
            if not sep or not name or not version:
                raise InputError(f"--to {args.to!r}", "write --to NAME==VERSION, e.g. --to accelerate==0.19.0")
            results = repatch.start(man, paths, runner, opts, name, version, fuzz=args.fuzz, accept=args.accept)
        elif session is not None:
            raise InputError(f"a repatch of {session.component} to {session.to_version} is in progress",
                             "`sd-env repatch --continue` after fixing the work tree, or `--abort`")
        elif repatch.pending_upgrades(man, paths):
            for name, version in repatch.pending_upgrades(man, paths):
                results += repatch.start(man, paths, runner, opts, name, version, fuzz=args.fuzz, accept=args.accept)
        else:
            results, error = repatch.restore(man, paths, runner, opts)
    except SdEnvError as exc:
        error = exc
        results = results or getattr(exc, "results", [])
    return common.report("repatch", results, error, args, paths)
