"""`sd-env run -- CMD...` and `sd-env shell`: a command, or a shell, inside the target.

Both hand the terminal over with exec (as `poetry run` and `pipenv run` do):
the command gets sd-env's stdin, stdout and stderr and its exit code is the
command's own, so here-documents, pipes and Ctrl-C behave as if the user had
activated the environment and typed the tutorial's `ulimit -n 65535` and
`export ACCELERATE_TORCH_DEVICE=...` first. Never returns on success.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sd_env.errors import InputError
from sd_env.report import progress
from sd_env.target import trainenv


def exec_in(target: trainenv.TrainEnv, argv: list[str], log: Path | None, quiet: bool = False) -> None:
    """Replace this process with `argv` in the target environment."""
    if not argv:
        raise InputError("no command given", "write it after --: sd-env run -- python train.py ...")
    program = shutil.which(argv[0], path=target.env.get("PATH"))
    if program is None:
        raise InputError(f"{argv[0]}: command not found in the target environment or on PATH",
                         "check the name; `sd-env run -- python -m pip list` shows what the target has")
    if not quiet:
        for note in target.notes:
            progress(note)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as out:
            out.write("\n".join(f"# {n}" for n in target.notes) + f"\n$ exec {' '.join(argv)}\n")
    trainenv.apply_nofile(target.nofile)
    os.execve(program, [argv[0], *argv[1:]], target.env)


def shell_argv(env: dict[str, str]) -> list[str]:
    """The user's $SHELL, else bash, else sh."""
    for candidate in (env.get("SHELL"), "bash", "sh"):
        if candidate and shutil.which(candidate, path=env.get("PATH")):
            return [candidate]
    raise InputError("no shell found ($SHELL, bash, sh)", "set SHELL to your shell's path")
