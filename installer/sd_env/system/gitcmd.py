"""Small git helpers over the runner (every git call is logged and timed out)."""

from __future__ import annotations

from pathlib import Path

from sd_env.system.runner import Completed, Runner

# Never prompt for credentials (a hang on a headless machine), keep output terse. The committer
# name and email are only ever written to reflogs (a clone, a checkout): without them git
# guesses an identity from the host name, a DNS lookup that an offline install must not make.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C",
           "GIT_COMMITTER_NAME": "sd-env", "GIT_COMMITTER_EMAIL": "sd-env@localhost"}
# Commits sd-env makes itself (sdist imports) must not depend on the user's git config.
IDENTITY = {
    "GIT_AUTHOR_NAME": "sd-env", "GIT_AUTHOR_EMAIL": "sd-env@localhost",
    "GIT_COMMITTER_NAME": "sd-env", "GIT_COMMITTER_EMAIL": "sd-env@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
}
FETCH_TIMEOUT = 20 * 60


def git(runner: Runner, repo: Path, *args: str, env: dict[str, str] | None = None,
        check: bool = True, timeout: float = 300, input_text: str | None = None,
        label: str | None = None) -> Completed:
    return runner.run(["git", "-C", str(repo), "-c", "advice.detachedHead=false", *args],
                      env={**GIT_ENV, **(env or {})}, check=check, timeout=timeout,
                      input_text=input_text, label=label)


def out(runner: Runner, repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return git(runner, repo, *args, env=env).stdout.strip()


def is_repo(path: Path) -> bool:
    return (path / ".git").exists()


def head(runner: Runner, repo: Path) -> str:
    return out(runner, repo, "rev-parse", "HEAD")


def has_commit(runner: Runner, repo: Path, commit: str) -> bool:
    return git(runner, repo, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0


def changed_paths(runner: Runner, repo: Path) -> list[str]:
    """Paths whose working-tree content differs from HEAD, untracked files included."""
    text = git(runner, repo, "status", "--porcelain=v1", "-z", "--untracked-files=all").stdout
    paths = []
    entries = text.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":  # a rename carries its source path as the next entry
            i += 1
        paths.append(path)
    return sorted(paths)
