"""What every command line shares: the parent parsers, the manifest and home a command works on,
the target it runs in, and the table-or-JSON report with its exit code."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from sd_env.core import config, manifest, stacks
from sd_env.errors import InputError, SdEnvError
from sd_env.report import dump_json, exit_code, results_json, results_table, say
from sd_env.system import shipped
from sd_env.system.paths import Paths, default_home
from sd_env.system.runner import Runner
from sd_env.target import envs, trainenv

DEFAULT_MANIFEST = "sc7-sd14-lora.toml"


@dataclass(frozen=True)
class Parents:
    """The parent parsers a command takes its shared flags from, as `parents=` lists."""

    common: list[argparse.ArgumentParser]  # -m, --home, --python, --json, -v
    writes: list[argparse.ArgumentParser]  # those and --wait: a command that writes to the home
    device: list[argparse.ArgumentParser]  # those and --device: a command that runs in the target


def parents() -> Parents:
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

    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="ACCELERATE_TORCH_DEVICE for the command (default: the manifest's "
                        "device when torch_tpu is installed in the target, else cpu)")
    return Parents([common], [common, writes], [common, device])


def default_manifest() -> Path:
    if os.environ.get("SD_ENV_MANIFEST"):
        return stacks.resolve(Path(os.environ["SD_ENV_MANIFEST"]))
    for folder in (Path.cwd() / "manifests", shipped.manifests()):  # shipped: the checkout, else the installed copy
        candidate = folder / DEFAULT_MANIFEST
        if candidate.is_file():
            return candidate
    raise InputError(f"no manifest given and no manifests/{DEFAULT_MANIFEST} here",
                     "pass -m/--manifest PATH or set SD_ENV_MANIFEST")


def python_mirror(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python-mirror", metavar="URL", default=None, help="where uv downloads a standalone Python "
                   "when the machine has none of the manifest's version: a mirror of python-build-standalone's "
                   "release downloads (also $UV_PYTHON_INSTALL_MIRROR or python-mirror in a config file)")


def anchors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expect", metavar="ID", help="refuse any bundle but this one (the bundle id that `bundle "
                   "create` printed: the sha256 of its index.json)")
    p.add_argument("--allowed-signers", type=Path, metavar="FILE", help="refuse a bundle whose index.json.sig "
                   "does not verify against a key in FILE (OpenSSH's allowed-signers format)")


def setup(args: argparse.Namespace, command: str) -> tuple[manifest.Manifest, Paths, Runner]:
    man = manifest.load(stacks.resolve(args.manifest) if args.manifest else default_manifest())
    config.apply(args, man.path)  # flags not given: from the environment or a config file
    home = args.home.expanduser().resolve() if args.home else default_home(man.path)
    paths = Paths(home)
    args._log = paths.log_file(command)
    if hasattr(args, "wait"):  # a command that writes: one at a time per home
        from sd_env.system import homelock  # here: read-only commands (run, status) do not load it

        folders = {man.path.parent} | {p.parent for c in man.components for p in c.patches}
        args._stack.enter_context(homelock.hold(paths, command, wait=args.wait, extra=tuple(sorted(folders))))
    return man, paths, Runner(log_path=args._log, echo=args.verbose)


def target(args: argparse.Namespace, runner: Runner, paths: Paths, man: manifest.Manifest,
           none: str = "no target environment", cached: bool = False) -> tuple[Path, envs.Inventory]:
    """The target environment a command other than install works in, and what it has (read
    once, while its version was checked; with `cached`, kept in the home and reused while the
    target's files are unchanged); an error saying `none` when there is none yet."""
    found = envs.resolve(runner, args.python, paths.home, man.python, create=False,
                         cache=paths.inventories if cached else None)
    if found.python is None or found.inventory is None:
        raise InputError(f"{none}: {found.how}", "run ./bootstrap.sh or sd-env install first")
    return found.python, found.inventory


def target_env(args: argparse.Namespace, command: str) -> tuple[trainenv.TrainEnv, Path]:
    man, paths, runner = setup(args, command)
    _python, inv = target(args, runner, paths, man, cached=True)  # run and shell: start-up is the point
    return trainenv.build(inv, man.device, args.device), args._log


def report(command: str, results: list, error: SdEnvError | None, args: argparse.Namespace, paths: Paths,
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
        error_said(error, args._log)
    return code


def error_said(exc: SdEnvError, log: Path | None) -> None:
    say(f"error: {exc.message}", stderr=True)
    if exc.hint:
        say(f"hint: {exc.hint}", stderr=True)
    if log is not None and log.exists():
        say(f"log: {log}", stderr=True)
