"""The stack's Python when the machine has none: a standalone CPython under the home.

Ubuntu 22.04 ships 3.10, Debian 12 ships 3.11, and neither has a python3.9 package, so
`envs.resolve` falls back to a relocatable CPython build (python-build-standalone, the one uv
installs): from the bundle being installed (its `python/` member, unpacked, no network), or
downloaded by `uv python install`. Either way it lands in `<home>/python/cpython-X.Y.Z-.../`,
needs no root and changes nothing outside the home (no link in ~/.local/bin: `--no-bin`).

The download source is uv's: its default servers, or a mirror of their release files (users
in China often cannot reach the default): `--python-mirror URL`, `$UV_PYTHON_INSTALL_MIRROR`
or `python-mirror` in a config file (config.py). uv checks each archive against the sha256
in its download metadata ($UV_PYTHON_DOWNLOADS_JSON_URL names other metadata).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sd_env.errors import CommandError, InputError, StepError
from sd_env.report import human, progress
from sd_env.system.fsutil import tree_size
from sd_env.system.runner import Runner
from sd_env.system.tools import find_uv

MIRROR_VAR = "UV_PYTHON_INSTALL_MIRROR"
# The standalone build's archive name (bundle-tool.sh checks the same before unpacking it).
ARCHIVE_NAME = r"cpython-(3\.[0-9]+)\.[0-9]+[A-Za-z0-9._+-]*\.tar\.gz"
# python-build-standalone's archive names: cpython-3.9.18+20990101-x86_64-unknown-linux-gnu-install_only....tar.gz
ARCHIVE = re.compile(rf"^{ARCHIVE_NAME}$")


@dataclass(frozen=True)
class Sources:
    """Where a missing Python may come from (install passes one; read-only commands none)."""

    mirror: str | None = None  # python-mirror: a mirror of the standalone builds' release downloads
    # A bundle's interpreter archive: returns a private, checked copy (the bundle is the only source).
    archive: Callable[[], Path] | None = None


def folder(home: Path) -> Path:
    return home / "python"


def installed(home: Path, want: str) -> Path | None:
    """A standalone Python `want` already under the home (uv's or a bundle's), newest patch first."""
    found = []
    for candidate in folder(home).glob(f"cpython-{want}.*"):
        python = candidate / "bin" / f"python{want}"
        if candidate.is_dir() and not candidate.is_symlink() and python.is_file() and os.access(python, os.X_OK):
            patch = candidate.name[len(f"cpython-{want}."):].split("-")[0].split("+")[0]
            found.append((int(patch) if patch.isdigit() else -1, python))
    return max(found)[1] if found else None


def obtain(runner: Runner, home: Path, want: str, sources: Sources, looked: str) -> Path:
    """A standalone Python `want` in <home>/python: from the bundle's archive, else by uv's download."""
    if sources.archive is not None:
        return unpack(runner, sources.archive(), home, want)
    uv = find_uv()
    why = f"no Python {want} found (looked at {looked})"
    if uv is None:
        raise InputError(f"{why}, and no uv to download one",
                         _hint(want, "install uv (pip install uv) and run again"))
    env = {MIRROR_VAR: as_url(sources.mirror)} if sources.mirror else {}
    url = _download_url(runner, uv, want, env)
    dest = folder(home)
    progress(f"{why}: installing a standalone CPython {want} with uv into {dest} (nothing outside it changes; "
             f"download {_size_of(url)} from {url or 'uv default source'})")
    try:
        runner.run([uv, "python", "install", want, "--install-dir", str(dest), "--no-bin"], env=env, timeout=1800,
                   label=f"uv: installing Python {want} into {dest}")
    except CommandError as exc:
        said = [line.strip() for line in exc.output.splitlines() if line.strip()]
        raise StepError(f"{why}, and uv could not install one: {said[-1] if said else exc.message}",
                        _hint(want)) from None
    python = installed(home, want)
    if python is None:
        raise StepError(f"uv said it installed Python {want}, but {dest} has no cpython-{want}.*/bin/python{want}",
                        _hint(want))
    progress(f"Python {want} is {python} ({human(tree_size(python.parents[1]))} on disk)")
    return python


def as_url(mirror: str) -> str:
    """uv takes URLs only: a folder given as a path becomes a file:// URL."""
    return mirror if "://" in mirror else Path(mirror).expanduser().resolve().as_uri()


def missing_from_bundle(bundle: Path, want: str) -> Path:
    """What install --bundle does on a machine without Python `want` when the bundle carries none."""
    raise InputError(f"no Python {want} on this machine, and the bundle {bundle} carries none (made with "
                     "--no-python, or by an older sd-env)",
                     f"install Python {want} (conda create -n sd python={want}; or pass --python "
                     f"/path/to/python{want}), or re-create the bundle with this sd-env (it carries a standalone "
                     "Python)")


def download_archive(runner: Runner, want: str, sources: Sources, work: Path) -> Path:
    """The standalone build's archive itself, for a bundle: uv downloads it (and checks its sha256
    against its download metadata) into a cache folder of ours, which keeps the archive."""
    uv = find_uv()
    if uv is None:
        raise InputError("bundle create needs uv to download the standalone Python", "pip install uv, or pass "
                         "--no-python (hosts then need their own Python)")
    cache, scratch = work / "python-cache", work / "python-install"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(scratch, ignore_errors=True)
    env = {"UV_PYTHON_CACHE_DIR": str(cache), **({MIRROR_VAR: as_url(sources.mirror)} if sources.mirror else {})}
    url = _download_url(runner, uv, want, env)
    progress(f"downloading the standalone CPython {want} for hosts without one ({_size_of(url)} from "
             f"{url or 'uv default source'})")
    try:
        runner.run([uv, "python", "install", want, "--install-dir", str(scratch), "--no-bin"], env=env,
                   timeout=1800, label=f"uv: downloading Python {want}")
    except CommandError as exc:
        said = [line.strip() for line in exc.output.splitlines() if line.strip()]
        raise StepError(f"uv could not download Python {want}: {said[-1] if said else exc.message}",
                        _hint(want, "pass --no-python (hosts then need their own Python)")) from None
    shutil.rmtree(scratch, ignore_errors=True)
    # uv names its cached archive HASHPREFIX-NAME ("+" made "-"): the member keeps NAME.
    got = [p for p in sorted(cache.glob("*.tar.gz")) if ARCHIVE.match(p.name.split("-", 1)[-1])]
    if len(got) != 1:
        raise StepError(f"expected one Python archive in uv's cache {cache}, found {[p.name for p in got]}")
    return got[0].rename(got[0].with_name(got[0].name.split("-", 1)[1]))


def _hint(want: str, first: str = "") -> str:
    return ((first + "; or ") if first else "") + (
        f"point uv at a mirror of the standalone Python builds: python-mirror = \"URL\" in sd-env.toml or "
        f"~/.config/sd-env/config.toml (or {MIRROR_VAR}=URL, or --python-mirror URL); or install Python {want} "
        f"yourself: conda create -n sd python={want} && conda activate sd (or pass --python /path/to/python{want}), "
        "then run again")


def _download_url(runner: Runner, uv: str, want: str, env: dict[str, str]) -> str | None:
    """The URL uv will download (its mirror applied), from `uv python list`; None when it does not say."""
    got = runner.run([uv, "python", "list", want, "--only-downloads", "--show-urls", "--output-format", "json"],
                     env=env, check=False, timeout=120)
    try:
        rows = json.loads(got.stdout) if got.returncode == 0 else []
    except ValueError:
        return None
    urls = [r.get("url") for r in rows if r.get("implementation") == "cpython" and r.get("url")]
    return urls[0] if urls else None


def _size_of(url: str | None) -> str:
    """The archive's size as its server tells it (a HEAD request), or why it is not known."""
    if not url:
        return "of unknown size"
    import urllib.parse
    import urllib.request  # here, not at the top: 40 ms of every command's start-up

    try:
        if url.startswith("file://"):
            return human(Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).stat().st_size)
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15) as resp:
            length = resp.headers.get("Content-Length")
        return human(int(length)) if length else "of unknown size"
    except (OSError, ValueError) as exc:
        return f"of unknown size ({type(exc).__name__}: {exc})"


def unpack(runner: Runner, archive: Path, home: Path, want: str) -> Path:
    """A standalone build's archive (top folder `python/`) into <home>/python/<its name>."""
    match = ARCHIVE.match(archive.name)
    if not match or match.group(1) != want:
        raise StepError(f"{archive.name} is not a standalone CPython {want} archive",
                        "re-create the bundle for this manifest")
    dest = folder(home) / archive.name[: -len(".tar.gz")]
    progress(f"no Python {want} on this machine: unpacking the bundle's {archive.name} "
             f"({human(archive.stat().st_size)}) into {dest}")
    folder(home).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder(home)))
    try:
        runner.run(["tar", "-xzf", str(archive), "-C", str(scratch), "--no-same-owner"], timeout=600,
                   label=f"tar: unpacking {archive.name}")
        python = scratch / "python" / "bin" / f"python{want}"
        if not python.is_file():
            raise StepError(f"{archive.name} has no python/bin/python{want}", "re-create the bundle")
        shutil.rmtree(dest, ignore_errors=True)
        (scratch / "python").rename(dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return dest / "bin" / f"python{want}"
