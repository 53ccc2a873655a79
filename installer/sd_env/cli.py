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
    envs,
    extras,
    install,
    lockfile,
    manifest,
    repatch,
    run,
    sources,
    status,
    train,
    trainenv,
    verify,
)
from sd_env.errors import InputError, SdEnvError
from sd_env.paths import Paths, default_home
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
    p.add_argument("--git-mirror", metavar="PREFIX", default=os.environ.get(sources.ENV_MIRROR),
                   help="fetch https://github.com/OWNER/NAME.git from PREFIX/OWNER/NAME.git "
                   f"(also ${sources.ENV_MIRROR})")
    p.add_argument("--no-sdist-fallback", action="store_true",
                   help="fail instead of using the PyPI sdist when git is unreachable")
    p.add_argument("--index-url", default=None,
                   help="package index for the lock (default: $PIP_INDEX_URL, pip.conf, PyPI)")
    p.add_argument("--torch-tpu-wheel", metavar="PATH_OR_URL", default=os.environ.get("SD_ENV_TORCH_TPU_WHEEL"),
                   help="Sophgo's torch_tpu wheel (overrides the manifest; also $SD_ENV_TORCH_TPU_WHEEL)")
    p.add_argument("--no-uv", action="store_true", help="install the lock with pip even when uv is available")
    p.add_argument("--sync", action="store_true", help="also remove packages the lock does not name "
                   "(asks first on a terminal)")
    p.add_argument("-y", "--yes", action="store_true", help="with --sync: remove without asking")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser("verify", parents=[common], help="check the environment and prove it trains")
    p.add_argument("--quick", action="store_true", help="skip the LoRA training step and inference")
    p.add_argument("--mixed-precision", choices=("no", "fp16"), default="no",
                   help="precision of the LoRA step (fp16 needs the card: n/a on the CPU)")
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
    p.add_argument("--git-mirror", metavar="PREFIX", default=os.environ.get(sources.ENV_MIRROR),
                   help=f"as for install (also ${sources.ENV_MIRROR})")
    p.add_argument("--no-sdist-fallback", action="store_true", help="as for install")
    p.set_defaults(func=_cmd_repatch)

    p = sub.add_parser("lock", parents=[common], help="re-resolve the era lock from the manifest (needs uv)")
    p.add_argument("--flavour", choices=("cpu", "pypi"), default="pypi",
                   help="which torch flavour to lock (default: pypi)")
    p.set_defaults(func=_cmd_lock)

    p = sub.add_parser("status", parents=[common], help="show what is pinned, patched, installed, drifted")
    p.set_defaults(func=_cmd_status)

    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="ACCELERATE_TORCH_DEVICE for the command (default: the manifest's "
                        "device when torch_tpu is installed in the target, else cpu)")
    p = sub.add_parser("run", parents=[common, device], help="run one command in the target environment "
                       "(sd-env run -- CMD ARGS...)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print what was set")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", parents=[common, device], help="the tutorial's LoRA fine-tuning on a local "
                       "model and dataset, then pictures (sd-env train --model DIR --data DIR [-- SCRIPT ARGS])")
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion folder (model_index.json)")
    p.add_argument("--data", type=Path, required=True, help="images + metadata.jsonl (file_name, text), "
                   "or a saved Hugging Face dataset")
    p.add_argument("--output", type=Path, default=Path("sd-env-lora"), help="the LoRA output folder "
                   "(default: ./sd-env-lora)")
    p.add_argument("--mixed-precision", choices=("no", "fp16"), help="the tutorial's fp32 (no) or fp16 run")
    p.add_argument("--resolution", help="training resolution (tutorial: 512)")
    p.add_argument("--max-train-steps", help="stop after N steps (default: the tutorial's 10 epochs)")
    p.add_argument("--validation-prompt", help="tutorial: \"cute dragon creature\"")
    p.add_argument("--seed", help="tutorial: 42")
    p.add_argument("--script", type=Path, help="train_text_to_image_lora.py to run (default: the managed "
                   "diffusers checkout's)")
    p.add_argument("--no-pictures", action="store_true", help="skip the with/without image and loss curve")
    p.add_argument("--inference-steps", type=int, default=30, help="steps for the with/without image (30)")
    p.add_argument("extra", nargs=argparse.REMAINDER, metavar="-- SCRIPT ARGS",
                   help="more script arguments; they replace the tutorial's")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("shell", parents=[common, device], help="a shell in the target environment with "
                       "the training variables set ($SHELL, else bash)")
    p.set_defaults(func=_cmd_shell)
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
    home = args.home.expanduser().resolve() if args.home else default_home(man.path)
    paths = Paths(home)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args._log = paths.logs / f"{stamp}-{os.getpid()}-{command}.log"
    return man, paths, Runner(log_path=args._log, echo=args.verbose)


def _cmd_install(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "install")
    python, how = envs.resolve(runner, args.python, paths.home, man.python)
    assert python is not None
    console(stderr=True).print(f"* target: {python} ({how})", markup=False)
    opts = install.Options(python, mirror=args.git_mirror, sdist_fallback=not args.no_sdist_fallback,
                           index_url=args.index_url, torch_tpu_wheel=args.torch_tpu_wheel,
                           use_uv=not args.no_uv)
    outcome = install.run(man, paths, runner, opts)
    if args.sync and outcome.error is None:
        try:
            outcome.results.append(extras.sync(man, runner, python, yes=args.yes, use_uv=not args.no_uv))
        except SdEnvError as exc:
            outcome.error = exc
    return _report("install", outcome.results, outcome.error, args, paths,
                   title=f"sd-env install ({man.name} -> {python})", python=str(python))


def _cmd_verify(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "verify")
    python, how = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    if python is None:
        raise InputError(f"nothing to verify: {how}", "run ./bootstrap.sh or sd-env install first")
    ctx = verify.Context(man, paths, runner, python, quick=args.quick, mixed_precision=args.mixed_precision)
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


def _target_env(args: argparse.Namespace, command: str) -> tuple[trainenv.TrainEnv, Path]:
    man, paths, runner = _setup(args, command)
    python, how = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    if python is None:
        raise InputError(f"no target environment: {how}", "run ./bootstrap.sh or sd-env install first")
    return trainenv.build(envs.inventory(runner, python), man.device, args.device), args._log


def _cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    target, log = _target_env(args, "run")
    run.exec_in(target, cmd, log, quiet=args.quiet)
    return 0  # not reached: exec_in replaces this process


def _cmd_train(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "train")
    python, how = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    if python is None:
        raise InputError(f"no target environment: {how}", "run ./bootstrap.sh or sd-env install first")
    flags = {"--mixed_precision": args.mixed_precision, "--resolution": args.resolution,
             "--max_train_steps": args.max_train_steps, "--validation_prompt": args.validation_prompt,
             "--seed": args.seed}
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    opts = train.Options(args.model, args.data, args.output, device=args.device, script=args.script,
                         pictures=not args.no_pictures, inference_steps=args.inference_steps,
                         settings={k: v for k, v in flags.items() if v}, extra=extra)
    outcome = train.run(man, paths, runner, python, opts)
    console().print(train.summary(outcome), markup=False)
    return 0


def _cmd_shell(args: argparse.Namespace) -> int:
    target, log = _target_env(args, "shell")
    if sys.stdin.isatty():
        target.notes.append("type `exit` to leave")
    run.exec_in(target, run.shell_argv(target.env), log)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "status")
    python, _how = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    rows = status.collect(man, paths, runner, python)
    status.render(rows, args.json, paths)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
