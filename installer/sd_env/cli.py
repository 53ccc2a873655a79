"""Command line: a thin argparse layer, `main(argv) -> int`.

Errors are turned into `error: ...`, a hint and an exit code here and only
here: 0 ok, 1 a step failed, 2 bad input, 3 another run holds the home.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import errno
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from sd_env import (
    __version__,
    ansible_inventory,
    bundle,
    bundle_create,
    bundle_install,
    bundle_trust,
    cli_models,
    config,
    emulation,
    envs,
    extras,
    fleet,
    homelock,
    hostfacts,
    install,
    lockfile,
    manifest,
    pythons,
    readiness,
    rehearse,
    repatch,
    run,
    sources,
    stacks,
    status,
    train,
    trainenv,
    verify,
)
from sd_env import paths as paths_mod
from sd_env import runner as runner_module
from sd_env.errors import InputError, SdEnvError
from sd_env.paths import ENV_HOME, Paths, default_home
from sd_env.report import OK, LiveTable, Result, dump_json, exit_code, progress, results_json, results_table, say, table
from sd_env.runner import Runner

DEFAULT_MANIFEST = "sc7-sd14-lora.toml"
_REPO = Path(__file__).resolve().parents[2]  # the sd-env checkout, for an editable install


def default_manifest() -> Path:
    if os.environ.get("SD_ENV_MANIFEST"):
        return stacks.resolve(Path(os.environ["SD_ENV_MANIFEST"]))
    for base in (Path.cwd(), _REPO):
        candidate = base / "manifests" / DEFAULT_MANIFEST
        if candidate.is_file():
            return candidate
    raise InputError(f"no manifest given and no manifests/{DEFAULT_MANIFEST} here",
                     "pass -m/--manifest PATH or set SD_ENV_MANIFEST")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-m", "--manifest", type=Path, help="manifest TOML, or a shipped stack's name "
                        f"(`sd-env stacks`; default: manifests/{DEFAULT_MANIFEST}, or $SD_ENV_MANIFEST)")
    common.add_argument("--home", type=Path, help="where checkouts, state and logs live "
                        "(default: $SD_ENV_HOME, else .sd-env/ in the project)")
    common.add_argument("--python", help="target interpreter or environment folder "
                        "(default: the active venv or conda env)")
    common.add_argument("--json", action="store_true", help="print a versioned JSON report")
    common.add_argument("-v", "--verbose", action="store_true", help="show subprocess output")

    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--wait", action="store_true",
                        help="wait for another sd-env run on the same home instead of failing at once")

    parser = argparse.ArgumentParser(
        prog="sd-env", description="Reproducible Stable Diffusion LoRA environments for Sophgo SC7.")
    parser.add_argument("--version", action="version", version=f"sd-env {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("install", parents=[common, writes], help="fetch, patch and install every component")
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
    python_mirror(p)
    p.add_argument("--bundle", metavar="OUT", type=Path, help="install from an offline bundle only (no index, "
                   "no git remote); the manifest defaults to the bundle's own")
    anchors(p)
    p.add_argument("--sync", action="store_true", help="also remove packages the lock does not name "
                   "(asks first on a terminal)")
    p.add_argument("-y", "--yes", action="store_true", help="with --sync: remove without asking")
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
                   help="take locked artifacts (and pinned sdists) from this folder before downloading; repeatable")
    b.add_argument("--sign", type=Path, metavar="KEY", help="sign index.json with this SSH private key "
                   "(ssh-keygen -Y sign, namespace sd-env-bundle) into index.json.sig")
    python_mirror(b)
    b.add_argument("--no-python", action="store_true", help="leave out the standalone Python (hosts then need "
                   "their own Python of the manifest's version)")
    b.add_argument("--with-model", action="store_true", help="carry the model's locked files (model/), from the "
                   "Hub cache where `sd-env model fetch` put them, checked against the model lock")
    b.add_argument("--with-data", action="store_true", help="carry the pinned dataset's locked files (data/)")
    b.set_defaults(func=_cmd_bundle_create)
    b = bsub.add_parser("verify", help="check a bundle's anchor, every member and its completeness")
    b.add_argument("out", type=Path, metavar="OUT")
    b.add_argument("-m", "--manifest", type=Path, help="a trusted checkout's manifest: its lock and patches "
                   "must be the bundle's byte for byte")
    anchors(b)
    b.add_argument("--json", action="store_true", help="print a JSON summary")
    b.set_defaults(func=_cmd_bundle_verify)

    p = sub.add_parser("verify", parents=[common], help="check the environment and prove it trains")
    p.add_argument("--quick", action="store_true", help="skip the LoRA training step and inference")
    p.add_argument("--mixed-precision", choices=("no", "fp16"), default="no",
                   help="precision of the LoRA step (fp16 needs the card: n/a on the CPU)")
    p.add_argument("--emulate", action="store_true",
                   help="run the smoke test, the LoRA step (fp16 and fp32) and inference on sd-env's emulated "
                   "torch_tpu (no card needed; built on first use, never installed)")
    p.add_argument("--strict", action="store_true",
                   help="with --emulate: the device refuses what the real plugin of the target's era refuses "
                   "(its strict profile, e.g. int64 on torch_tpu 2.8; default: the manifest's [emulator] profile)")
    p.add_argument("--devices", type=int, choices=range(1, 9), default=1, metavar="N",
                   help="with --emulate: add a row, an all-reduce across N emulated devices (\"sccl\")")
    p.add_argument("--model", type=Path, metavar="DIR", help="a local diffusers model folder for the LoRA step "
                   "and inference (default: a tiny model built locally)")
    p.add_argument("--data", type=Path, metavar="DIR", help="a local imagefolder (images + metadata.jsonl) for "
                   "the LoRA step (default: a tiny dataset built locally)")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("repatch", parents=[common, writes],
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

    p = sub.add_parser("lock", parents=[common, writes], help="re-resolve the era lock from the manifest (needs uv)")
    p.add_argument("--flavour", choices=("cpu", "pypi"), default="pypi",
                   help="which torch flavour to lock (default: pypi)")
    p.set_defaults(func=_cmd_lock)

    p = sub.add_parser("emulate", parents=[common], help="run a command in the target with an emulated tpu device")
    p.add_argument("--device", help="ACCELERATE_TORCH_DEVICE for the command (default: tpu:0)")
    p.add_argument("--strict", action="store_true", help="the device refuses what the real plugin of the target's "
                   "era refuses (its strict profile; default: the manifest's [emulator] profile)")
    p.add_argument("--devices", type=int, choices=range(1, 9), metavar="N", help="emulate N devices, tpu:0 to "
                   "tpu:N-1 (SG_MAX_DEVICE_COUNT; default 1), with the \"sccl\" backend between processes")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command and its arguments")
    p.set_defaults(func=_cmd_emulate)

    cli_models.add(sub, common, writes)

    p = sub.add_parser("status", parents=[common], help="show what is pinned, patched, installed, drifted")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("config", parents=[common], help="show the settings in force and where each came from")
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("fleet-report", help="one table of many hosts' `verify --json` reports (HOST.json "
                       "files, as the Ansible role fetches them): ready or not, and who differs")
    p.add_argument("reports", type=Path, metavar="REPORT_DIR")
    p.add_argument("--json", action="store_true", help="print a versioned JSON report")
    p.add_argument("--max-age", type=_age, default=fleet.DEFAULT_MAX_AGE, metavar="AGE",
                   help="a report that finished longer ago is stale, its host not ready: 90m, 12h, 2d or seconds "
                   "(default: 1d)")
    p.add_argument("--inventory", type=Path, metavar="FILE", help="the playbook's Ansible INI inventory: its "
                   "hosts without a report are listed as missing (not ready)")
    p.set_defaults(func=_cmd_fleet_report)
    p = sub.add_parser("stacks", help="list the shipped stacks (manifests) and what each is for")
    p.add_argument("--json", action="store_true", help="print a versioned JSON report")
    p.set_defaults(func=_cmd_stacks)
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="ACCELERATE_TORCH_DEVICE for the command (default: the manifest's "
                        "device when torch_tpu is installed in the target, else cpu)")
    p = sub.add_parser("run", parents=[common, device], help="run one command in the target environment "
                       "(sd-env run -- CMD ARGS...)")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print what was set")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("train", parents=[common, device], help="the tutorial's LoRA fine-tuning on the pinned "
                       "(or a local) model and a local dataset, then pictures and a run record (sd-env train "
                       "[--model DIR] --data DIR [-- SCRIPT ARGS])")
    p.add_argument("--model", help="a diffusers Stable Diffusion folder (model_index.json) (default: the "
                   "manifest's pinned [model], fetched by `sd-env model fetch` and checked against its lock)")
    p.add_argument("--data", type=Path, help="images + metadata.jsonl (file_name, text), or a saved Hugging Face "
                   "dataset (default: the manifest's pinned [dataset], if any)")
    p.add_argument("--check", action="store_true", help="only check that train can start (the training script, "
                   "the target, and --model/--data when given) and say what is missing; trains nothing")
    p.add_argument("--output", type=Path, default=Path("sd-env-lora"), help="the LoRA output folder "
                   "(default: ./sd-env-lora)")
    p.add_argument("--mixed-precision", choices=("no", "fp16"), help="the tutorial's fp32 (no) or fp16 run")
    p.add_argument("--devices", metavar="LIST", help="train on several devices, one process each through accelerate's "
                   "launcher: 0,1 (tpu:0 and tpu:1) or all; needs the multi-device patch (-m sc7-sd14-lora-multi)")
    p.add_argument("--emulate", action="store_true", help="train on sd-env's emulated tpu (no card needed; with "
                   "--devices, as many emulated devices as it names, or $SG_MAX_DEVICE_COUNT)")
    p.add_argument("--resolution", help="training resolution (tutorial: 512)")
    p.add_argument("--max-train-steps", help="stop after N steps (default: the tutorial's 10 epochs)")
    p.add_argument("--validation-prompt", help="tutorial: \"cute dragon creature\"")
    p.add_argument("--seed", help="tutorial: 42")
    p.add_argument("--script", type=Path, help="train_text_to_image_lora.py to run (default: the managed "
                   "diffusers checkout's)")
    p.add_argument("--no-pictures", action="store_true", help="skip the with/without image and loss curve")
    p.add_argument("--inference-steps", type=int, default=30, help="steps for sd-env's with/without image (30); "
                   "the script's own validation always takes 30 (see --validation-images)")
    p.add_argument("--validation-images", type=int, metavar="N", help="images the script draws for validation "
                   "after each epoch and at the end (default: its 4, of 30 steps each); 0: no validation")
    p.add_argument("extra", nargs=argparse.REMAINDER, metavar="-- SCRIPT ARGS",
                   help="more script arguments; they replace the tutorial's")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("rehearse", parents=[common], help="the tutorial's training on the emulated tpu with "
                       "SD 1.4's full network (random weights): does it fit one chip, does every op run there")
    rehearse_flags(p)
    p.set_defaults(func=_cmd_rehearse)

    p = sub.add_parser("shell", parents=[common, device], help="a shell in the target environment with "
                       "the training variables set ($SHELL, else bash)")
    p.set_defaults(func=_cmd_shell)
    parser.set_defaults(_commands=list(sub.choices))
    return parser


def python_mirror(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python-mirror", metavar="URL", default=None, help="where uv downloads a standalone Python "
                   "when the machine has none of the manifest's version: a mirror of python-build-standalone's "
                   "release downloads (also $UV_PYTHON_INSTALL_MIRROR or python-mirror in a config file)")


def anchors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expect", metavar="ID", help="refuse any bundle but this one (the bundle id that `bundle "
                   "create` printed: the sha256 of its index.json)")
    p.add_argument("--allowed-signers", type=Path, metavar="FILE", help="refuse a bundle whose index.json.sig "
                   "does not verify against a key in FILE (OpenSSH's allowed-signers format)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    try:
        _known_command(parser, argv)
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if "--json" not in argv or exc.code in (0, None):
            raise
        # argparse has said what is wrong on stderr; stdout still gets its one document.
        words = [a for a in argv if not a.startswith("-")]
        dump_json(words[0] if words else "", 2, {}, error=InputError("bad command line (see stderr)",
                                                                       "sd-env COMMAND --help"))
        return 2
    try:
        with contextlib.ExitStack() as stack:
            args._stack = stack  # holds the home's lock (commands that write) until the command returns
            return int(args.func(args))
    except SdEnvError as exc:
        return _fail(args, exc, exc.exit_code)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        # A full or read-only disk is the machine's state, not a bug: say where, keep the traceback out.
        where = exc.filename or "a file sd-env writes"
        return _fail(args, SdEnvError(f"cannot write {where}: {exc.strerror} (full disk or read-only file system)",
                                      "free space there (or pass --home on another disk) and run the same command "
                                      "again"), 1)
    except KeyboardInterrupt:
        return _fail(args, SdEnvError("interrupted", "re-run the same command to finish"), 130)
    except Exception as exc:  # a bug in sd-env: keep the traceback, on stderr and in the log
        trace = traceback.format_exc()
        sys.stderr.write(trace)
        log = getattr(args, "_log", None)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a", encoding="utf-8") as out:
                out.write(trace)
        error = SdEnvError(f"internal error: {type(exc).__name__}: {exc}",
                           "this is a bug in sd-env: please report it with the traceback above and the log")
        return _fail(args, error, INTERNAL_ERROR)


def _known_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A mistyped command gets the one it resembles (`verfy`: did you mean verify?), as git does."""
    word = next((a for a in argv if not a.startswith("-")), None)
    commands = parser.get_default("_commands")
    if word is None or word in commands:
        return
    close = difflib.get_close_matches(word, list(commands), n=1)
    parser.error(f"unknown command {word!r}" + (f": did you mean {close[0]}?" if close else
                                                 f" (commands: {', '.join(commands)})"))


INTERNAL_ERROR = 70  # EX_SOFTWARE: an exception sd-env did not expect (a bug), not bad input or a failed step


def _fail(args: argparse.Namespace, exc: SdEnvError, code: int) -> int:
    """An error that stopped a command before its report: on stderr, and as the JSON document."""
    log = getattr(args, "_log", None)
    if args.json and not getattr(args, "_reported", False):
        dump_json(args.command, code, {"log": str(log) if log else None}, error=exc)
    _error(exc, log)
    return code


def _error(exc: SdEnvError, log: Path | None) -> None:
    say(f"error: {exc.message}", stderr=True)
    if exc.hint:
        say(f"hint: {exc.hint}", stderr=True)
    if log is not None and log.exists():
        say(f"log: {log}", stderr=True)


def _setup(args: argparse.Namespace, command: str) -> tuple[manifest.Manifest, Paths, Runner]:
    man = manifest.load(stacks.resolve(args.manifest) if args.manifest else default_manifest())
    config.apply(args, man.path)  # flags not given: from the environment or a config file
    home = args.home.expanduser().resolve() if args.home else default_home(man.path)
    paths = Paths(home)
    args._log = paths.log_file(command)
    if hasattr(args, "wait"):  # a command that writes: one at a time per home
        folders = {man.path.parent} | {p.parent for c in man.components for p in c.patches}
        args._stack.enter_context(homelock.hold(paths, command, wait=args.wait, extra=tuple(sorted(folders))))
    return man, paths, Runner(log_path=args._log, echo=args.verbose)


def _cmd_install(args: argparse.Namespace) -> int:
    if args.bundle is not None:
        _use_bundle(args)
    elif args.expect or args.allowed_signers:
        raise InputError("--expect and --allowed-signers anchor an offline bundle: they need --bundle OUT",
                         "add --bundle OUT, or drop them (an install from git and PyPI checks commits and hashes)")
    man, paths, runner = _setup(args, "install")
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
    return _report("install", outcome.results, outcome.error, args, paths,
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
                                       mirror=args.git_mirror, from_home=args.from_home, reuse=tuple(args.reuse),
                                       sign=args.sign, python=None if args.no_python else
                                       pythons.Sources(mirror=args.python_mirror),
                                       with_model=args.with_model, with_data=args.with_data)
    index = bundle_create.create(man, paths, runner, opts)
    if args.json:
        args._reported = True
        dump_json("bundle create", 0, {"out": str(args.out.resolve()), "id": bundle_create.bundle_id(args.out),
                                       "signed": args.sign is not None, "members": len(index.members),
                                       "bytes": index.size, "log": str(args._log)})
    return 0


def _cmd_bundle_verify(args: argparse.Namespace) -> int:
    checked = bundle_trust.verify(args.out, Runner(), args.expect, args.allowed_signers, args.manifest)
    index, anchor = checked.index, checked.anchor
    kinds: dict[str, int] = {}
    for m in index.members:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    if args.json:
        args._reported = True
        dump_json("bundle verify", 0, {"ok": True, "id": anchor.id, "anchored": anchor.how, "signer": anchor.signer,
                                       "manifest": index.manifest_name, "manifest_sha256": index.manifest_sha256,
                                       "members": len(index.members), "bytes": index.size, "kinds": kinds})
        return 0
    pins = len(checked.lock.pins) if checked.lock else 0
    shown = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    wheel = f", torch_tpu {index.torch_tpu}" if index.torch_tpu else ", no torch_tpu wheel"
    say(f"bundle {args.out} ok: {len(index.members)} members, {bundle.human(index.size)}, all sha256 match the "
        f"index; complete for manifest {index.manifest_name} (sha256 {index.manifest_sha256[:12]}): {pins} locked "
        f"packages, {len(index.components)} component sources{wheel}"
        + "".join(f", extra {n}" for n in index.extras) + f" [{shown}]")
    say(anchor.said())
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "verify")
    model, data = verify.local_inputs(args.model, args.data)
    python, inv = _target(args, runner, paths, man, "nothing to verify")
    if args.strict and not args.emulate:
        raise InputError("--strict is for the emulated device", "add --emulate")
    if args.devices > 1 and not args.emulate:
        raise InputError("--devices is for the emulated devices (on a card: sd-env train --devices)", "add --emulate")
    ctx = verify.Context(man, paths, runner, python, quick=args.quick, mixed_precision=args.mixed_precision,
                         model=model, data=data, inventory=inv, strict=args.strict, devices=args.devices)
    title = f"sd-env verify ({man.name}, {python})" + (" on the emulated tpu" if args.emulate else "")
    if args.emulate:
        from sd_env import verify_emulated  # builds a C++ extension: only loaded when asked for

        run_checks = verify_emulated.run
    else:
        run_checks = verify.run
    with LiveTable(title, verify.COLUMNS, every=runner_module.HEARTBEAT, rows=not args.json) as live:
        checks = run_checks(ctx, started=live.start, finished=lambda check: live.add(verify.cells(check)))
    code = exit_code(checks)
    block = verify.environment_block(ctx)
    if args.json:
        args._reported = True
        dump_json("verify", code, {"host": socket.gethostname(), "python": str(python), "device": ctx.device,
                                   "emulated": ctx.emulated, "checks": [dataclasses.asdict(c) for c in checks],
                                   "facts": hostfacts.collect(ctx), "environment": block.splitlines(),
                                   **hostfacts.provenance(paths), "log": str(args._log)})
        return code
    say("\nFor bug reports (copy and paste):\n" + block)
    verdict, *more = readiness.verify_summary(checks, paths, quick=args.quick, emulated=args.emulate)
    say("\n".join([f"\n{verdict} (log: {args._log})", *more]))
    return code


def _cmd_repatch(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "repatch")
    if args.abort:
        try:
            return _report("repatch", [repatch.abort(paths)], None, args, paths)
        except SdEnvError as exc:
            return _report("repatch", [], exc, args, paths)
    python, _inv = _target(args, runner, paths, man, "no target environment to repatch")
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
    return _report("repatch", results, error, args, paths)


def _report(command: str, results: list, error: SdEnvError | None, args: argparse.Namespace, paths: Paths,
            title: str = "", **extra: object) -> int:
    """The results as a table or JSON, then the error (if any) and the exit code."""
    code = error.exit_code if error is not None else exit_code(results)
    if args.json:
        args._reported = True
        dump_json(command, code, {"results": results_json(results), "home": str(paths.home),
                                  "log": str(args._log), **extra}, error=error)
    else:
        results_table(title or f"sd-env {command}", results)
    if error is not None:
        _error(error, args._log)
    return code


def _cmd_lock(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "lock")
    if man.lock is None:
        raise InputError(f"{man.path}: no [lock] table", "add one (see manifests/sc7-sd14-lora.toml)")
    progress(f"resolving the {args.flavour} flavour of {man.name}")
    started = time.monotonic()
    out = lockfile.compile_lock(man, args.flavour, runner)
    lock = lockfile.read(out)
    listed = "" if args.flavour in man.lock.files else f"; listed in {man.path} [lock.files] {args.flavour}"
    done = Result("env", "lock", OK, f"wrote {out} ({len(lock.pins)} packages, all hashed{listed})",
                  time.monotonic() - started)
    return _report("lock", [done], None, args, paths, flavour=args.flavour)


def _cmd_emulate(args: argparse.Namespace) -> int:
    """`sd-env run` with the emulated tpu on PYTHONPATH: the same environment, notes and exec."""
    man, paths, runner = _setup(args, "emulate")
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise InputError("no command to run", "write it after --, e.g. sd-env emulate -- python train.py")
    python, inv = _target(args, runner, paths, man)
    emu = emulation.build(runner, python, paths)
    device = args.device or "tpu:0"
    setup = emulation.settings(man, emu, args.strict)
    target = trainenv.build(inv, man.device, device, why="--device" if args.device else "sd-env emulate's default")
    target.env.update(emulation.environment(emu, device, setup))
    if args.devices:
        target.env["SG_MAX_DEVICE_COUNT"] = str(args.devices)
        target.notes.append(emulation.describe_devices(args.devices))
    target.notes.append(emulation.note(emu, device))
    target.notes.extend(emulation.describe(setup))
    run.exec_in(target, cmd, args._log)
    return 0  # not reached: exec_in replaces this process


def _cmd_config(args: argparse.Namespace) -> int:
    try:
        where: Path | None = args.manifest or default_manifest()
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


def _target_env(args: argparse.Namespace, command: str) -> tuple[trainenv.TrainEnv, Path]:
    man, paths, runner = _setup(args, command)
    _python, inv = _target(args, runner, paths, man)
    return trainenv.build(inv, man.device, args.device), args._log


def _target(args: argparse.Namespace, runner: Runner, paths: Paths, man: manifest.Manifest,
            none: str = "no target environment") -> tuple[Path, envs.Inventory]:
    """The target environment a command other than install works in, and what it has (read
    once, while its version was checked); an error saying `none` when there is none yet."""
    found = envs.resolve(runner, args.python, paths.home, man.python, create=False)
    if found.python is None or found.inventory is None:
        raise InputError(f"{none}: {found.how}", "run ./bootstrap.sh or sd-env install first")
    return found.python, found.inventory


def _cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    target, log = _target_env(args, "run")
    run.exec_in(target, cmd, log, quiet=args.quiet)
    return 0  # not reached: exec_in replaces this process


def _cmd_train(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "train")
    python, inv = _target(args, runner, paths, man)
    if args.check:
        say(train.check(man, paths, args.script, args.model, args.data))
        return 0
    flags = {"--mixed_precision": args.mixed_precision, "--resolution": args.resolution,
             "--max_train_steps": args.max_train_steps, "--validation_prompt": args.validation_prompt,
             "--seed": args.seed}
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    opts = train.Options(args.model, args.data, args.output, device=args.device, devices=args.devices,
                         emulate=args.emulate, script=args.script,
                         pictures=not args.no_pictures, inference_steps=args.inference_steps,
                         validation_images=args.validation_images,
                         settings={k: v for k, v in flags.items() if v}, extra=extra)
    outcome = train.run(man, paths, runner, python, opts, inv)
    say(train.summary(outcome))
    return 0


def rehearse_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolution", type=int, default=512, help="training resolution (tutorial: 512)")
    p.add_argument("--batch", type=int, default=1, help="--train_batch_size (tutorial: 1)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "both"), default="both",
                   help="fp32 (no), fp16, or both one after the other (default)")
    p.add_argument("--steps", type=int, default=2, help="training steps per precision (at least 2: the first "
                   "one's time includes loading the models)")
    p.add_argument("--capacity", metavar="SIZE", help="one chip's memory, e.g. 16G (default: "
                   "$SD_ENV_EMULATED_MEMORY, the manifest's [emulator] memory, else 16G)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="the script's --gradient_checkpointing "
                   "(diffusers v0.20.0's LoRA example ignores it: sd-env says so)")
    p.add_argument("--search", action="store_true", help="a precision that runs out of memory in training is run "
                   "again with --gradient-checkpointing, 3/4 and 1/2 the resolution, then batch 1, until one fits "
                   "(each a run as long as the first; they inform, the exit code is the asked runs')")
    p.add_argument("--model", type=Path, help="a diffusers model folder of your own instead of SD 1.4's "
                   "architecture with random weights")
    p.add_argument("--data", type=Path, help="images + metadata.jsonl (default: four drawn shapes)")
    p.add_argument("--output", type=Path, default=Path("sd-env-rehearsal"), help="where the runs write "
                   "(default: ./sd-env-rehearsal)")
    p.add_argument("--keep-model", action="store_true", help="keep the built model (4 GiB) in OUTPUT/sd14-arch "
                   "for --model OUTPUT/sd14-arch/model next time (default: deleted; rebuilding takes about 35 s)")
    p.add_argument("--script", type=Path, help="train_text_to_image_lora.py to run (default: the managed "
                   "diffusers checkout's)")


def _cmd_rehearse(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "rehearse")
    python, _inv = _target(args, runner, paths, man)
    both = ("no", "fp16") if args.mixed_precision == "both" else (args.mixed_precision,)
    opts = rehearse.Options(args.output, args.resolution, args.batch, both, args.steps, args.capacity,
                            args.model, args.data, args.keep_model, args.gradient_checkpointing, args.script,
                            args.search)
    measured, about = rehearse.run(man, paths, runner, python, opts)
    code = exit_code(m for m in measured if not m.setting)  # --search's runs say what fits, they do not fail
    if args.json:
        args._reported = True
        dump_json("rehearse", code, rehearse.json_body(measured, about, opts))
        return code
    table(f"sd-env rehearse: {opts.resolution} x {opts.resolution}, batch {opts.batch}, {about['capacity']}",
          rehearse.COLUMNS, rehearse.rows(measured))
    for line in rehearse.advice(measured, opts, about.get("script_checkpoints", True)):
        say(f"- {line}")
    say("seconds per step and host RAM are the emulation's, on this CPU: not the card's")
    if about.get("kept"):
        say(f"model kept: --model {about['model']}")
    return code


def _cmd_shell(args: argparse.Namespace) -> int:
    target, log = _target_env(args, "shell")
    if sys.stdin.isatty():
        target.notes.append("type `exit` to leave")
    run.exec_in(target, run.shell_argv(target.env), log)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    man, paths, runner = _setup(args, "status")
    found = envs.resolve(runner, args.python, paths.home, man.python, create=False)
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


def _age(text: str) -> float:
    try:
        return fleet.parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_fleet_report(args: argparse.Namespace) -> int:
    inventory = ansible_inventory.hosts(args.inventory) if args.inventory else None
    hosts = fleet.read(args.reports, args.max_age, inventory)
    return fleet.render(args.reports, hosts, args.json, args.max_age)


def _cmd_stacks(args: argparse.Namespace) -> int:
    stacks.render([stacks.describe(m) for m in stacks.shipped()], args.json)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
