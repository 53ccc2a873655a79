"""Get each component's upstream source into a managed checkout at its pinned commit.

git first (one tag, depth 1, through an optional mirror), the PyPI sdist of
the same version when git cannot reach the host. Either way the result is a
git work tree, so patching and drift detection work the same on both; an
sdist is imported as one local commit. A checkout is built in a scratch
folder and renamed into place only once verified: an interrupted or failed
fetch leaves nothing half-done in `src/`.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from sd_env.core.manifest import Component
from sd_env.errors import CommandError, InputError, StepError
from sd_env.report import progress
from sd_env.system import faults, fsutil, gitcmd
from sd_env.system.runner import Runner

ENV_MIRROR = "SD_ENV_GIT_MIRROR"
# Build leftovers of editable installs; excluded so they never count as local edits.
EXCLUDES = ["*.egg-info/", "__pycache__/", "*.pyc", "/build/", "/.eggs/"]
_GITHUB = re.compile(r"^(?:https://github\.com/|git@github\.com:)([^/]+)/([^/]+?)(?:\.git)?/?$")
# pip download's words when the index answered but has no such version (a list of the ones it has),
# and the versions it left out for their Requires-Python.
_NO_VERSION = re.compile(r"Could not find a version that satisfies the requirement \S+ \(from versions: ([^)]*)\)")
_OTHER_PYTHON = re.compile(r"([^\s;:]+) Requires-Python ([^;\s]+)")


@dataclass(frozen=True)
class Fetched:
    source: str  # "git" or "sdist"
    commit: str
    sdist_sha256: str | None = None
    url: str = ""


class MovedTag(StepError):
    pass


def mirror_lacks(url: str, mirror: str | None) -> bool:
    """A local-folder mirror without this repository (a remote one can only tell by a fetch)."""
    match = _GITHUB.match(url)
    if not mirror or "://" in mirror or mirror.startswith("git@") or not match:
        return False
    owner, name = match.groups()
    return not (Path(mirror).expanduser() / owner / f"{name}.git").is_dir()


def mirror_url(url: str, mirror: str | None) -> str:
    """https://github.com/OWNER/NAME.git -> PREFIX/OWNER/NAME.git (other URLs unchanged)."""
    if not mirror:
        return url
    match = _GITHUB.match(url)
    if not match:
        return url
    prefix = mirror.rstrip("/")
    if "://" not in prefix and not prefix.startswith("git@"):
        # A local folder: as a file:// URL so that shallow fetches stay shallow.
        prefix = Path(prefix).expanduser().resolve().as_uri()
    owner, name = match.groups()
    return f"{prefix}/{owner}/{name}.git"


def fetch_git(comp: Component, dest: Path, work: Path, runner: Runner, *,
              mirror: str | None, expect: str | None) -> Fetched:
    """Clone `comp.tag` into `dest`; the tag must resolve to `expect` when it is known."""
    url = mirror_url(comp.git, mirror)
    tmp = scratch(work, comp.name)
    try:
        gitcmd.git(runner, tmp, "init", "-q")
        gitcmd.git(runner, tmp, "remote", "add", "origin", comp.git)
        ref = f"refs/tags/{comp.tag}"
        gitcmd.git(runner, tmp, "fetch", "--depth", "1", "--no-tags", url, f"+{ref}:{ref}",
                   timeout=gitcmd.FETCH_TIMEOUT, label=f"git: fetching {comp.name} {comp.tag}")
        commit = gitcmd.out(runner, tmp, "rev-parse", f"{ref}^{{commit}}")
        if expect and commit != expect:
            raise MovedTag(
                f"{comp.name}: tag {comp.tag} at {url} points to {commit}, "
                f"but the manifest pins {expect}",
                "a moved tag is not trusted: check upstream, then update `commit` in the manifest "
                "if the new commit is intended",
            )
        gitcmd.git(runner, tmp, "checkout", "-q", "--detach", commit)
        exclude_build_leftovers(tmp)
        faults.point("fetched")
        move_into_place(tmp, dest)
        faults.point("moved")
        return Fetched("git", commit, url=url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def unreachable(error: CommandError) -> bool:
    """True when git failed to reach the host or repository (not for a missing tag)."""
    if error.returncode is None:
        return True
    return "couldn't find remote ref" not in error.output


def fetch_sdist(comp: Component, dest: Path, work: Path, runner: Runner, *, python: Path) -> Fetched:
    """Download `comp.name==comp.version` as an sdist with the target's pip, import it as a commit."""
    tmp = scratch(work, comp.name)
    try:
        download = tmp / "download"
        try:
            runner.run(
                [str(python), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--no-build-isolation", "--dest", str(download), f"{comp.name}=={comp.version}"],
                env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
                hint="the sdist fallback needs PyPI or a mirror (PIP_INDEX_URL / pip.conf)",
                label=f"pip: downloading the sdist of {comp.name}=={comp.version}",
            )
        except CommandError as exc:
            missing = no_such_release(comp.name, comp.version, exc.output)
            if missing is not None:
                raise missing from None
            raise
        archives = sorted(download.glob("*.tar.gz"))
        if len(archives) != 1:
            raise StepError(f"{comp.name}: expected one sdist from pip download, got {archives}")
        return import_sdist(comp, archives[0], dest, tmp, runner)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_sdist(comp: Component, archive: Path) -> str:
    """The archive's sha256, which must be the manifest's `sdist_sha256` when it pins one."""
    digest = fsutil.sha256_file(archive)
    if comp.sdist_sha256 and digest != comp.sdist_sha256:
        raise StepError(f"{comp.name}: {archive.name} has sha256 {digest}, the manifest pins sdist_sha256 = "
                        f"{comp.sdist_sha256}",
                        "the index (or bundle) serves another file than the one pinned: use PyPI or a faithful "
                        "mirror; change the pin only after checking the file's origin")
    return digest


def import_sdist(comp: Component, archive: Path, dest: Path, work: Path, runner: Runner) -> Fetched:
    """The sdist `archive` (checked against the manifest's pin) as one local commit in `dest`.

    The commit's author, committer and dates are fixed, so the same sdist always gives the same commit.
    """
    digest = check_sdist(comp, archive)
    tmp = scratch(work, f"{comp.name}-import")
    try:
        tree = tmp / "tree"
        _extract(archive, tree)
        gitcmd.git(runner, tree, "init", "-q")
        gitcmd.git(runner, tree, "add", "-A")
        message = f"{comp.name} {comp.version} from its PyPI sdist\n\nsha256 {digest}\n"
        gitcmd.git(runner, tree, "commit", "-q", "--no-verify", "-m", message, env=gitcmd.IDENTITY)
        exclude_build_leftovers(tree)
        commit = gitcmd.head(runner, tree)
        move_into_place(tree, dest)
        return Fetched("sdist", commit, sdist_sha256=digest, url=archive.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def no_such_release(name: str, version: str, output: str) -> InputError | None:
    """The error for a version the index does not have, when pip's output says the index answered
    (it lists the versions it has); None for any other failure (no network: "from versions: none")."""
    found = _NO_VERSION.search(output)
    have = _versions(found.group(1).split(",") if found else [])
    if not have:
        return None
    newest = max([v for v in have if not v.is_prerelease] or have)
    # "Ignored the following versions that require a different python version: 1.11.0 Requires-Python ..."
    ignored = dict(_OTHER_PYTHON.findall(" ".join(line for line in output.splitlines() if "Ignored" in line)))
    later = max((v for v in _versions(list(ignored)) if v > newest), default=None)
    also = f"; {later} needs Python {ignored.get(str(later), 'another')}" if later is not None else ""
    return InputError(f"{name} {version}: no such release on the package index (its newest sdist for this "
                      f"Python is {newest}{also})",
                      f"pick a released version, e.g. {name}=={newest} (`pip index versions {name}` lists them)")


def _versions(texts: list[str]) -> list[Version]:
    found = []
    for text in texts:
        try:
            found.append(Version(text.strip()))
        except InvalidVersion:
            continue
    return found


def fetch(comp: Component, dest: Path, work: Path, runner: Runner, *, mirror: str | None,
          expect: str | None, python: Path, sdist_fallback: bool) -> Fetched:
    """git first; the PyPI sdist of the same version when git cannot reach the host (said loudly).

    A missing tag is never papered over by the sdist: it is an error.
    """
    url = mirror_url(comp.git, mirror)
    try:
        return fetch_git(comp, dest, work, runner, mirror=mirror, expect=expect)
    except CommandError as exc:
        if exc.disk_full:
            raise  # not a missing tag: it says the disk is full
        if not unreachable(exc):
            raise StepError(f"{comp.name}: tag {comp.tag} not found at {url}",
                            "check `tag` (and `version`) in the manifest") from None
        if not (comp.sdist and sdist_fallback):
            raise StepError(f"{comp.name}: git cannot reach {url}",
                            "use a mirror: --git-mirror PREFIX or SD_ENV_GIT_MIRROR") from None
    # Which files the sdist lacks is said per component, by the patch rows that need them.
    progress(f"WARNING: git cannot reach {url}; falling back to the PyPI sdist {comp.name}=={comp.version}")
    fetched = fetch_sdist(comp, dest, work, runner, python=python)
    progress(f"using the sdist of {comp.name} {comp.version}: its library code is that of {comp.tag} "
             "(it has no examples/ or tests/)")
    return fetched


def switch_commit(runner: Runner, repo: Path, commit: str) -> bool:
    """Check out `commit` if the checkout already has it (no network); False if it does not."""
    if not gitcmd.has_commit(runner, repo, commit):
        return False
    gitcmd.git(runner, repo, "checkout", "-q", "--detach", commit)
    return True


def _extract(archive: Path, dest: Path) -> None:
    """Unpack an sdist's single top folder into `dest`.

    Members are written one by one: links and paths that escape are refused,
    and file owners from the archive are not kept (as root, tarfile would
    keep them and git then calls the tree of "dubious ownership").
    """
    staging = dest.parent / (dest.name + ".unpack")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                raise StepError(f"{archive.name}: refusing archive member {member.name!r}")
            out = staging.joinpath(*parts)
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member)
            assert data is not None
            out.write_bytes(data.read())
            out.chmod(0o755 if member.mode & 0o111 else 0o644)
    tops = list(staging.iterdir())
    if len(tops) != 1 or not tops[0].is_dir():
        raise StepError(f"{archive.name}: an sdist has one top folder, found {len(tops)}")
    os.replace(tops[0], dest)
    staging.rmdir()
    # Metadata generated at sdist time is not in the git tag; dropping it keeps
    # the tree equal to the tag's and avoids a second distribution on sys.path.
    (dest / "PKG-INFO").unlink(missing_ok=True)
    for info in list(dest.glob("*.egg-info")) + list(dest.glob("src/*.egg-info")):
        shutil.rmtree(info)


def exclude_build_leftovers(repo: Path) -> None:
    exclude = repo / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    exclude.write_text("# sd-env: build leftovers of editable installs\n" + "\n".join(EXCLUDES) + "\n")


def scratch(work: Path, name: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))


def move_into_place(tmp: Path, dest: Path) -> None:
    if dest.exists():
        raise InputError(f"{dest} appeared while sd-env was fetching into it",
                         "another sd-env may be running; wait for it and run again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
