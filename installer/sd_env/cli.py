"""Command line: the assembly of the commands' parsers (commands/), and `main(argv) -> int`.

Errors are turned into `error: ...`, a hint and an exit code here and only
here: 0 ok, 1 a step failed, 2 bad input, 3 another run holds the home.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import sys

from sd_env import __version__
from sd_env.errors import InputError, SdEnvError
from sd_env.report import dump_json

# (command, its module in commands/, the function that adds its parser), in the order `sd-env --help`
# lists them. Only the module of the command being run is imported: `sd-env run` does not load what
# install, verify or bundle need.
COMMANDS = (("install", "install", "add"), ("bundle", "bundle", "add"), ("verify", "verify", "add"),
            ("repatch", "repatch", "add"), ("lock", "lock", "add"), ("emulate", "emulate", "add"),
            ("model", "model", "add"), ("run-diff", "run_diff", "add"), ("status", "status", "add"),
            ("config", "config", "add"), ("fleet-report", "fleet_report", "add"), ("stacks", "stacks", "add"),
            ("run", "run", "add"), ("train", "train", "add"), ("rehearse", "rehearse", "add"),
            ("shell", "run", "add_shell"))
NAMES = [name for name, _module, _add in COMMANDS]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command `only` (the one being run) alone."""
    parser = argparse.ArgumentParser(
        prog="sd-env", description="Reproducible Stable Diffusion LoRA environments for Sophgo SC7.")
    parser.add_argument("--version", action="version", version=f"sd-env {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if only != "":  # `sd-env --version` (or no command) needs no command's parser, nor what common.py loads
        from sd_env.commands import common

        parents = common.parents()
        for name, module, add in COMMANDS:
            if only is None or name == only:
                getattr(importlib.import_module(f"sd_env.commands.{module}"), add)(sub, parents)
    parser.set_defaults(_commands=NAMES)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    word = next((a for a in argv if not a.startswith("-")), None)
    if word in NAMES:
        parser = build_parser(word)
    else:  # every command's parser for help or a typo; none for --version or a missing command
        parser = build_parser(None if word is not None or {"-h", "--help"} & set(argv) else "")
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
        import traceback  # here and difflib below: start-up is for the commands that go well

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
    import difflib

    close = difflib.get_close_matches(word, list(commands), n=1)
    parser.error(f"unknown command {word!r}" + (f": did you mean {close[0]}?" if close else
                                                 f" (commands: {', '.join(commands)})"))


INTERNAL_ERROR = 70  # EX_SOFTWARE: an exception sd-env did not expect (a bug), not bad input or a failed step


def _fail(args: argparse.Namespace, exc: SdEnvError, code: int) -> int:
    """An error that stopped a command before its report: on stderr, and as the JSON document."""
    log = getattr(args, "_log", None)
    if args.json and not getattr(args, "_reported", False):
        dump_json(args.command, code, {"log": str(log) if log else None}, error=exc)
    from sd_env.commands import common

    common.error_said(exc, log)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
