"""Command line: a thin argparse layer, `main(argv) -> int`.

Errors are turned into `error: ...`, a hint and an exit code here and only
here: 0 ok, 1 a step failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from sd_env import (
    __version__,
    bundle,
    bundle_create,
    bundle_install,
    config,
    envs,
    install,
    lockfile,
    manifest,
    repatch,
    sources,
    status,
    verify,
)
from sd_env import paths as paths_mod
from sd_env.errors import InputError, SdEnvError
from sd_env.paths import ENV_HOME, Paths, default_home
from sd_env.report import REPORT_VERSION, console, dump_json, exit_code, table
from sd_env.runner import Runner

DEFAULT_MANIFEST = "sc7-sd14-lora.toml"
_REPO = Path(__file__).resolve().parents[2]  # the sd-env checkout, for an editable install


def default_manifest() -> Path:
    if os.environ.get("SD_ENV_MANIFEST"):
        return Path(os.environ["SD_ENV_MANIFEST"])
    for base in (Path.cwd(), _REPO):
        candidate = base / "manifests" / DEFAULT_MANIFEST
        if candidate.is_file():
            return candidate
    raise InputError(f"no manifest given and no manifests/{DEFAULT_MANIFEST} here",
                     "pass -m/--manifest PATH or set SD_ENV_MANIFEST")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-m", "--manifest", type=Path, help="manifest TOML (default: manifests/"
                        f"{DEFAULT_MANIFEST}, or $SD_ENV_MANIFEST)")
    common.add_argument("--home", type=Path, help="where checkouts, state and logs live "
                        "(default: $SD_ENV_HOME, else .sd-env/ in the project)")
    common.add_argument("--python", help="target interpreter or environment folder "
                        "(default: the active venv or conda env)")
    common.add_argument("--json", action="store_true", help="print a versioned JSON report")
    common.add_argument("-v", "--verbose", action="store_true", help="show subprocess output")

    parser = argparse.ArgumentParser(
        prog="sd-env", description="Reproducible Stable Diffusion LoRA environments for Sophgo SC7.")
    parser.add_argument("--version", action="version", version=f"sd-env {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("install", parents=[common], help="fetch, patch and install every component")
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
    p.add_argument("--bundle", metavar="OUT", type=Path, help="install from an offline bundle only (no index, "
                   "no git remote); the manifest defaults to the bundle's own")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser("bundle", help="an offline bundle: create one, or check one")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    b = bsub.add_parser("create", parents=[common], help="pack what the manifest needs into the folder OUT")
    b.add_argument("out", type=Path, metavar="OUT")
    b.add_argument("--torch-tpu-wheel", metavar="PATH_OR_URL", default=None,
                   help="Sophgo's torch_tpu wheel to include (default: the manifest's, when present)")
    b.add_argument("--include", action="append", default=[], metavar="NAME=PATH",
                   help="an extra file or folder (weights, a dataset) as extra/NAME, sha256 per file; repeatable")
    b.add_argument("--git-mirror", metavar="PREFIX", default=None,
                   help="as for install, for components not already checked out")
    b.add_argument("--from-home", type=Path, metavar="HOME",
                   help="take checkouts from this finished home (read only; default: --home)")
    b.add_argument("--reuse", type=Path, action="append", default=[], metavar="DIR",
                   help="take locked artifacts from this folder of wheels before downloading; repeatable")
    b.set_defaults(func=_cmd_bundle_create)
    b = bsub.add_parser("verify", help="check every member of a bundle and its completeness")
    b.add_argument("out", type=Path, metavar="OUT")
    b.add_argument("--json", action="store_true", help="print a JSON summary")
    b.set_defaults(func=_cmd_bundle_verify)

    p = sub.add_parser("verify", parents=[common], help="check the environment and prove it trains")
    p.add_argument("--quick", action="store_true", help="skip the LoRA training step and inference")
    p.add_argument("--mixed-precision", choices=("no", "fp16"), default="no",
                   help="precision of the LoRA step (fp16 needs the card: n/a on the CPU)")
    p.add_argument("--model", type=Path, metavar="DIR", help="a local diffusers model folder for the LoRA step "
                   "and inference (default: a tiny model built locally)")
    p.add_argument("--data", type=Path, metavar="DIR", help="a local imagefolder (images + metadata.jsonl) for "
                   "the LoRA step (default: a tiny dataset built locally)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("repatch", parents=[common], help="restore patched components, or port patches to a release")
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

    p = sub.add_parser("lock", parents=[common], help="re-resolve the era lock from the manifest (needs uv)")
    p.add_argument("--flavour", choices=("cpu", "pypi"), default="pypi",
                   help="which torch flavour to lock (default: pypi)")
    p.set_defaults(func=_cmd_lock)

    p = sub.add_parser("status", parents=[common], help="show what is pinned, patched, installed, drifted")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("config", parents=[common], help="show the settings in force and where each came from")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SdEnvError as exc:
        _error(exc, getattr(args, "_log", None))
        return exc.exit_code
    except KeyboardInterrupt:
        console(stderr=True).print("interrupted: re-run the same command to finish", markup=False)
        return 130


def _error(exc: SdEnvError, log: Path | None) -> None:
    err = console(stderr=True)
    err.print(f"error: {exc.message}", markup=False)
    if exc.hint:
        err.print(f"hint: {exc.hint}", markup=False)
    if log is not None and log.exists():
        err.print(f"log: {log}", markup=False)


def _setup(args: argparse.Namespace, command: str) -> tuple[manifest.Manifest, Paths, Runner]:
    man = manifest.load(args.manifest or default_manifest())
    config.apply(args, man.path)  # flags not given: from the environment or a config file
    home = args.home.expanduser().resolve() if args.home else default_home(man.path)
    paths = Paths(home)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args._log = paths.logs / f"{stamp}-{os.getpid()}-{command}.log"
    return man, paths, Runner(log_path=args._log, echo=args.verbose)


def _cmd_install(args: argparse.Namespace) -> int:
    if args.bundle is not None:
        _use_bundle(args)
    man, paths, runner = _setup(args, "install")
    python, how = envs.resolve(runner, args.python, paths.home, man.python)
    assert python is not None
    console(stderr=True).print(f"* target: {python} ({how})", markup=False)
    opts = install.Options(python, mirror=args.git_mirror, sdist_fallback=not args.no_sdist_fallback,
                           index_url=args.index_url, torch_tpu_wheel=args.torch_tpu_wheel,
                           use_uv=not args.no_uv, bundle=args.bundle)
    outcome = install.run(man, paths, runner, opts)
    return _report("install", outcome.results, outcome.error, args, paths,
                   title=f"sd-env install ({man.name} -> {python})", python=str(python))


def _use_bundle(args: argparse.Namespace) -> None:
    """Check the whole bundle before anything is written; its manifest unless one is named
    (which must then be the very one the bundle was made for)."""
    args.bundle = args.bundle.resolve()
    checked = bundle_install.open_checked(args.bundle)
    own = args.bundle / checked.index.manifest_path
    named = args.manifest or (Path(os.environ["SD_ENV_MANIFEST"]) if os.environ.get("SD_ENV_MANIFEST") else None)
    if named is not None:
        bundle.same_manifest(checked.index, named)
    args.manifest = own  # patches and lock are read from the checked copies
    if args.home is None and not os.environ.get(ENV_HOME):
        args.home = Path.cwd() / ".sd-env"  # never inside the bundle
    if not args.torch_tpu_wheel and checked.index.torch_tpu:
        args.torch_tpu_wheel = str(args.bundle / checked.index.torch_tpu)
    elif not args.torch_tpu_wheel:
        console(stderr=True).print("* the bundle has no torch_tpu wheel: a CPU-only environment unless you pass "
                                   "--torch-tpu-wheel PATH (do not add files to the bundle: verify refuses them)",
                                   markup=False)


def _cmd_bundle_create(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "bundle")
    includes = {}
    for item in args.include:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or not all(c.isalnum() or c in "._-" for c in name):
            raise InputError(f"--include {item!r}", "write --include NAME=PATH, NAME of letters, digits, . _ -")
        if name in includes:
            raise InputError(f"--include {name} given twice", "give each extra folder its own NAME")
        includes[name] = Path(path)
    opts = bundle_create.CreateOptions(args.out, torch_tpu_wheel=args.torch_tpu_wheel, includes=includes,
                                       mirror=args.git_mirror, from_home=args.from_home, reuse=tuple(args.reuse))
    index = bundle_create.create(man, paths, runner, opts)
    if args.json:
        print(json.dumps({"version": REPORT_VERSION, "command": "bundle create", "out": str(args.out.resolve()),
                          "members": len(index.members), "bytes": index.size, "log": str(args._log)}, indent=2))
    return 0


def _cmd_bundle_verify(args: argparse.Namespace) -> int:
    checked = bundle.verify(args.out)
    index = checked.index
    kinds: dict[str, int] = {}
    for m in index.members:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    if args.json:
        print(json.dumps({"version": REPORT_VERSION, "command": "bundle verify", "ok": True,
                          "manifest": index.manifest_name, "manifest_sha256": index.manifest_sha256,
                          "members": len(index.members), "bytes": index.size, "kinds": kinds}, indent=2))
        return 0
    pins = len(checked.lock.pins) if checked.lock else 0
    shown = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    console().print(f"bundle {args.out} ok: {len(index.members)} members, {bundle.human(index.size)}, all sha256 "
                    f"match the index; complete for manifest {index.manifest_name} (sha256 "
                    f"{index.manifest_sha256[:12]}): {pins} locked packages, {len(index.components)} git "
                    f"histories" + (f", torch_tpu {index.torch_tpu}" if index.torch_tpu else ", no torch_tpu wheel")
                    + "".join(f", extra {n}" for n in index.extras) + f" [{shown}]", markup=False)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "verify")
    model, data = verify.local_inputs(args.model, args.data)
    python, how = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    if python is None:
        raise InputError(f"nothing to verify: {how}", "run ./bootstrap.sh or sd-env install first")
    ctx = verify.Context(man, paths, runner, python, quick=args.quick, mixed_precision=args.mixed_precision,
                         model=model, data=data)
    checks = verify.run(ctx)
    code = verify.exit_code(checks)
    block = verify.environment_block(ctx)
    if args.json:
        doc = {"version": REPORT_VERSION, "command": "verify", "exit_code": code, "python": str(python),
               "device": ctx.device, "checks": [dataclasses.asdict(c) for c in checks],
               "environment": block.splitlines(), "log": str(args._log)}
        print(json.dumps(doc, indent=2))
        return code
    grid = Table(title=f"sd-env verify ({man.name}, {python})", title_justify="left")
    for col in ("check", "status", "detail", "s"):
        grid.add_column(col, justify="right" if col == "s" else "left")
    style = {"ok": "green", "warn": "yellow", "fail": "bold red", "skipped": "dim", "n/a": "dim"}
    for c in checks:
        grid.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", escape(c.detail), f"{c.seconds:.1f}")
    out = console()
    out.print(grid)
    out.print("\nFor bug reports (copy and paste):\n" + block, markup=False)
    failed = [c.name for c in checks if c.status == "fail"]
    out.print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} (log: {args._log})",
              markup=False)
    return code


def _cmd_repatch(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "repatch")
    if args.abort:
        try:
            return _report("repatch", [repatch.abort(paths)], None, args, paths)
        except SdEnvError as exc:
            return _report("repatch", [], exc, args, paths)
    python, _how = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    if python is None:
        raise InputError("no target environment to repatch", "run ./bootstrap.sh or sd-env install first")
    opts = install.Options(python, mirror=args.git_mirror, sdist_fallback=not args.no_sdist_fallback)
    session = repatch.load_session(paths)
    results: list = []
    error: SdEnvError | None = None
    try:
        if args.resume or (session is not None and session.phase == "finishing" and not args.to):
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
    return _report("repatch", results, error, args, paths)


def _report(command: str, results: list, error: SdEnvError | None, args: argparse.Namespace, paths: Paths,
            title: str = "", **extra: str) -> int:
    """The results as a table or JSON, then the error (if any) and the exit code."""
    if args.json:
        dump_json(command, results, {"home": str(paths.home), "log": str(args._log),
                                     "error": error.message if error else None, **extra})
    else:
        table(title or f"sd-env {command}", results)
    if error is not None:
        _error(error, args._log)
        return error.exit_code
    return exit_code(results)


def _cmd_lock(args: argparse.Namespace) -> int:
    man, _paths, runner = _setup(args, "lock")
    if man.lock is None:
        raise InputError(f"{man.path}: no [lock] table", "add one (see manifests/sc7-sd14-lora.toml)")
    console(stderr=True).print(f"* resolving the {args.flavour} flavour of {man.name}", markup=False)
    out = lockfile.compile_lock(man, args.flavour, runner)
    lock = lockfile.read(out)
    console().print(f"wrote {out} ({len(lock.pins)} packages, all hashed)", markup=False)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        where: Path | None = args.manifest or default_manifest()
    except InputError:
        where = None  # no project: only the user's file
    settings = config.resolve({}, where)
    files = ([paths_mod.project_config(where)] if where else []) + [paths_mod.user_config()]
    if args.json:
        print(json.dumps({"version": REPORT_VERSION, "command": "config",
                          "settings": {k: dataclasses.asdict(v) for k, v in settings.items()},
                          "files": [{"path": str(f), "exists": f.is_file()} for f in files]}, indent=2))
        return 0
    grid = Table(title="sd-env config (flag > environment > project > user)", title_justify="left")
    for col in ("key", "value", "from"):
        grid.add_column(col)
    for s in settings.values():
        grid.add_row(s.key, escape(s.value or "(not set)"), escape(s.source))
    out = console()
    out.print(grid)
    for f in files:
        out.print(f"{'read' if f.is_file() else 'absent'}: {f}", markup=False)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "status")
    python, _how = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    rows = status.collect(man, paths, runner, python)
    status.render(rows, args.json, paths)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
