"""`sd-env install`: fetch, patch and install every component (from an offline bundle with --bundle)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sd_env.bundle import install as bundle_install
from sd_env.commands import common
from sd_env.errors import InputError, SdEnvError
from sd_env.patching import sources
from sd_env.report import progress
from sd_env.system.paths import ENV_HOME, Paths
from sd_env.system.runner import Runner
from sd_env.target import envs, extras, pythons
from sd_env.workflows import install


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("install", parents=parents.writes, help="fetch, patch and install every component")
    p.add_argument("--git-mirror", metavar="PREFIX", default=None,
                   help="fetch https://github.com/OWNER/NAME.git from PREFIX/OWNER/NAME.git "
                   f"(also ${sources.ENV_MIRROR} or git-mirror in a config file: see `sd-env config`)")
    p.add_argument("--no-sdist-fallback", action="store_true",
                   help="fail instead of using the PyPI sdist when git is unreachable")
    p.add_argument("--index-url", default=None,
                   help="package index for the lock (default: $PIP_INDEX_URL, pip.conf, PyPI)")
    p.add_argument("--torch-tpu-wheel", metavar="PATH_OR_URL", default=None,
                   help="Sophgo's torch_tpu wheel (overrides the manifest; also $SD_ENV_TORCH_TPU_WHEEL)")
    p.add_argument("--no-uv", action="store_true", help="install the lock with pip even when uv is available")
    common.python_mirror(p)
    p.add_argument("--bundle", metavar="OUT", type=Path, help="install from an offline bundle only (no index, "
                   "no git remote); the manifest defaults to the bundle's own")
    common.anchors(p)
    p.add_argument("--sync", action="store_true", help="also remove packages the lock does not name "
                   "(asks first on a terminal)")
    p.add_argument("-y", "--yes", action="store_true", help="with --sync: remove without asking")
    p.set_defaults(func=_cmd_install)


def _cmd_install(args: argparse.Namespace) -> int:
    if args.bundle is not None:
        _use_bundle(args)
    elif args.expect or args.allowed_signers:
        raise InputError("--expect and --allowed-signers anchor an offline bundle: they need --bundle OUT",
                         "add --bundle OUT, or drop them (an install from git and PyPI checks commits and hashes)")
    man, paths, runner = common.setup(args, "install")
    found = envs.resolve(runner, args.python, paths.home, man.python, sources=_python_sources(args, paths))
    python = found.python
    assert python is not None
    progress(f"target: {python} ({found.how})")
    opts = install.Options(python, mirror=args.git_mirror, sdist_fallback=not args.no_sdist_fallback,
                           index_url=args.index_url, torch_tpu_wheel=args.torch_tpu_wheel,
                           use_uv=not args.no_uv, bundle=getattr(args, "_checked", None),
                           inventory=found.inventory)
    outcome = install.run(man, paths, runner, opts)
    if args.sync and outcome.error is None:
        try:
            synced, removed = extras.sync(man, runner, python, yes=args.yes, use_uv=not args.no_uv)
            outcome.results.append(synced)
            outcome.changed |= removed
        except SdEnvError as exc:
            outcome.error = exc
    changed = outcome.changed or found.created  # a new venv or conda env is a change too
    anchor = getattr(args, "_anchor", None)
    said = {"bundle": {"id": anchor.id, "anchored": anchor.how, "signer": anchor.signer}} if anchor else {}
    return common.report("install", outcome.results, outcome.error, args, paths,
                   title=f"sd-env install ({man.name} -> {python})", python=str(python), changed=changed, **said)


def _python_sources(args: argparse.Namespace, paths: Paths) -> pythons.Sources:
    """Where a missing Python comes from: the bundle's own (and nothing else) when installing one."""
    checked = getattr(args, "_checked", None)
    if checked is None:
        return pythons.Sources(mirror=args.python_mirror)
    rel = checked.index.interpreter
    if rel is None:
        return pythons.Sources(archive=lambda: pythons.missing_from_bundle(checked.root, checked.index.python))
    return pythons.Sources(archive=lambda: bundle_install.private_copy(checked, rel, paths.work))


def _use_bundle(args: argparse.Namespace) -> None:
    """The bundle's anchor, then every member, before anything is written; its manifest unless one
    is named (a trusted checkout's, which must then match the bundle's byte for byte)."""
    args.bundle = args.bundle.resolve()
    home = args.home or (Path(os.environ[ENV_HOME]) if os.environ.get(ENV_HOME) else Path.cwd() / ".sd-env")
    home = home.expanduser().resolve()
    if home == args.bundle or args.bundle in home.parents:
        raise InputError(f"the install folder {home} is inside the bundle {args.bundle}",
                         "run from another folder, or pass --home (or SD_ENV_HOME) outside the bundle: its files "
                         "would be members the index does not list")
    named = args.manifest or (Path(os.environ["SD_ENV_MANIFEST"]) if os.environ.get("SD_ENV_MANIFEST") else None)
    checked = bundle_install.open_checked(args.bundle, Runner(), args.expect, args.allowed_signers, named)
    args._anchor = checked.anchor
    args._checked = checked
    args.manifest = args.bundle / checked.index.manifest_path  # the checked copies of lock and patches
    args.home = home
    if not args.torch_tpu_wheel and checked.index.torch_tpu:
        args.torch_tpu_wheel = str(args.bundle / checked.index.torch_tpu)
    elif not args.torch_tpu_wheel:
        progress("the bundle has no torch_tpu wheel: a CPU-only environment unless you pass "
                 "--torch-tpu-wheel PATH (do not add files to the bundle: verify refuses them)")
