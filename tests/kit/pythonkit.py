"""A standalone CPython mirror for the tests: the servers that publish python-build-standalone
are out of reach here, so one is made from a Python present on the machine.

`standalone_archive` packs an installed CPython (pyenv's, or one uv installed) in the layout of
python-build-standalone's `install_only` archives (a top folder `python/` with bin/, lib/,
include/), with every absolute RUNPATH pointing into the old prefix rewritten relative to
`$ORIGIN` (as the real builds have it), so the copy runs wherever it is unpacked, for any user.
`make_mirror` lays such archives out as a mirror of the release downloads
(`MIRROR/BUILD/FILE`, what UV_PYTHON_INSTALL_MIRROR points at) and writes the download
metadata uv reads with UV_PYTHON_DOWNLOADS_JSON_URL (its documented option for archives it does
not know: its built-in list has the real builds' sha256). A user's mirror of the real releases
needs only the mirror setting.

Standard library only: .ci/run runs it (as root, with pyenv's Python) to give the unprivileged
test user the mirror root's Pythons make: `python tests/kit/pythonkit.py OUT VERSION...`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUILD = "20990101"  # a release tag no real build has: an archive of ours is never taken for one
UPSTREAM = "https://github.com/astral-sh/python-build-standalone/releases/download"  # what a mirror replaces
SKIP = ("test", "idlelib", "tkinter", "turtledemo", "site-packages", "__pycache__", "lib2to3/tests")


@dataclass(frozen=True)
class Archive:
    path: Path
    version: str  # 3.9.18
    sha256: str

    @property
    def key(self) -> str:
        return f"cpython-{self.version}-linux-{platform.machine()}-gnu"


def version_of(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def prefix_of(python: Path) -> Path:
    """The installation (not a venv) the interpreter belongs to."""
    out = subprocess.run([str(python), "-c", "import sys; print(sys.base_prefix)"], check=True,
                         capture_output=True, text=True, timeout=60).stdout.strip()
    return Path(out)


def _skipped(rel: str, minor: str) -> bool:
    lib = f"lib/python{minor}/"
    if rel.endswith((".a", ".pyc")) or "/__pycache__" in rel or rel.startswith("share/"):
        return True
    return rel.startswith(lib) and any(rel[len(lib):].startswith(s + "/") or rel[len(lib):] == s for s in SKIP)


def _relocated(data: bytes, old_lib: bytes, rel_dir: str) -> bytes:
    """An ELF file whose RUNPATH names `old_lib` gets `$ORIGIN/...` in the same bytes (shorter, padded)."""
    needle = old_lib + b"\x00"
    if not data.startswith(b"\x7fELF") or needle not in data:
        return data
    depth = rel_dir.count("/") + 1 if rel_dir else 0
    new = ("$ORIGIN/" + "../" * depth + "lib").encode()
    if len(new) > len(old_lib):
        raise ValueError(f"cannot relocate {rel_dir}: {new!r} is longer than {old_lib!r}")
    return data.replace(needle, new + b"\x00" * (len(needle) - len(new)))


def standalone_archive(python: Path, out_dir: Path, build: str = BUILD) -> Archive:
    """python-build-standalone's install_only layout, from the installation `python` belongs to."""
    prefix = prefix_of(python)
    version = version_of(python)
    minor = ".".join(version.split(".")[:2])
    name = f"cpython-{version}+{build}-{platform.machine()}-unknown-linux-gnu-install_only_stripped.tar.gz"
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / name
    partial = dest.with_name(dest.name + ".partial")
    old_lib = str(prefix / "lib").encode()
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        for folder, dirs, files in os.walk(prefix):
            dirs.sort()
            base = Path(folder)
            rel_dir = base.relative_to(prefix).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir
            for entry in sorted(files) + [d for d in dirs if (base / d).is_symlink()]:
                path = base / entry
                rel = f"{rel_dir}/{entry}" if rel_dir else entry
                if _skipped(rel, minor):
                    continue
                info = tar.gettarinfo(str(path), arcname=f"python/{rel}")
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    data = _relocated(path.read_bytes(), old_lib, rel_dir)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.addfile(info)
            dirs[:] = [d for d in dirs if not (base / d).is_symlink()
                       and not _skipped(f"{rel_dir}/{d}" if rel_dir else d, minor)]
    os.replace(partial, dest)
    return Archive(dest, version, sha256_of(dest))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_mirror(archives: list[Archive], mirror: Path, build: str = BUILD) -> Path:
    """MIRROR/BUILD/FILE for each archive (a hard link, else a copy), and MIRROR/downloads.json:
    uv's download metadata naming each by its upstream URL (which the mirror setting rewrites)."""
    (mirror / build).mkdir(parents=True, exist_ok=True)
    entries = {}
    for archive in archives:
        dest = mirror / build / archive.path.name
        if not dest.exists():
            try:
                os.link(archive.path, dest)
            except OSError:
                dest.write_bytes(archive.path.read_bytes())
        major, minor, patch = (int(p) for p in archive.version.split("."))
        entries[archive.key] = {
            "name": "cpython", "arch": {"family": platform.machine(), "variant": None}, "os": "linux",
            "libc": "gnu", "major": major, "minor": minor, "patch": patch, "prerelease": "",
            "url": f"{UPSTREAM}/{build}/{archive.path.name.replace('+', '%2B')}", "sha256": archive.sha256,
            "variant": None, "build": build}
    meta = mirror / "downloads.json"
    meta.write_text(json.dumps(entries, indent=1) + "\n")
    return meta


# What a host without Python has: coreutils' programs (those bootstrap.sh, pip and git may call).
COREUTILS = ("basename", "cat", "chmod", "chown", "cp", "cut", "date", "dirname", "du", "echo", "env", "expr", "false",
             "head", "id", "ln", "ls", "mkdir", "mktemp", "mv", "nproc", "od", "printf", "pwd", "readlink", "realpath",
             "rm", "rmdir", "sha256sum", "sleep", "sort", "stat", "tail", "tee", "touch", "tr", "true", "uname", "wc")


def minimal_bin(where: Path, *extra: str) -> Path:
    """A folder of links to coreutils' programs and the `extra` ones: a PATH holding nothing else."""
    where.mkdir(parents=True, exist_ok=True)
    for name in (*COREUTILS, *extra):
        found = shutil.which(name, path="/usr/bin:/bin")
        if found is None:
            raise FileNotFoundError(f"{name} is not installed in /usr/bin or /bin")
        (where / name).symlink_to(found)
    return where


# -- the tests' mirror (conftest.py's session fixture) ------------------------------------------------------
MIRROR_VAR, JSON_VAR = "UV_PYTHON_INSTALL_MIRROR", "UV_PYTHON_DOWNLOADS_JSON_URL"
# The shipped stacks' Pythons, and the one running the tests: each one this machine has is packed (about 1 s each).
STACK_VERSIONS = tuple(dict.fromkeys([f"{sys.version_info[0]}.{sys.version_info[1]}", "3.9", "3.10", "3.11"]))


def interpreter_for(minor: str) -> Path | None:
    """An installed CPython `minor` (3.10) to pack: the one running the tests, else pyenv's, else
    python3.X on the PATH; None when this machine (or this user) has none."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == minor:
        return Path(sys.base_prefix) / "bin" / f"python{minor}"
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    try:
        found = sorted(root.glob(f"{minor}.*/bin/python{minor}"),
                       key=lambda p: [int(x) for x in p.parents[1].name.split(".") if x.isdigit()])
    except OSError:  # another user's pyenv
        found = []
    for candidate in [*reversed(found), *filter(None, [shutil.which(f"python{minor}")])]:
        try:
            if os.access(candidate, os.X_OK) and version_of(Path(candidate)).startswith(minor + "."):
                return Path(candidate)
        except (OSError, subprocess.SubprocessError):
            continue
    return None


@dataclass
class Mirror:
    """A folder laid out as a mirror of the standalone builds, with its download metadata."""

    root: Path  # MIRROR (BUILD/FILE under it)
    meta: Path  # downloads.json

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def versions(self) -> dict[str, str]:
        """minor -> full version of each archive the metadata lists."""
        doc = json.loads(self.meta.read_text())
        return {f"{e['major']}.{e['minor']}": f"{e['major']}.{e['minor']}.{e['patch']}" for e in doc.values()}


def session_mirror(where: Path) -> Mirror:
    """The environment's mirror when it names one (CI gives the unprivileged user root's), else a
    new one in `where` holding the Python running the tests and each stack's this machine has."""
    given = os.environ.get(JSON_VAR)
    if given and os.environ.get(MIRROR_VAR, "").startswith("file://"):
        return Mirror(Path(urllib.request.url2pathname(urllib.parse.urlparse(os.environ[MIRROR_VAR]).path)),
                      Path(given))
    mirror = Mirror(where / "mirror", where / "mirror" / "downloads.json")
    found = [p for p in (interpreter_for(minor) for minor in STACK_VERSIONS) if p is not None]
    make_mirror([standalone_archive(p, where / "archives") for p in found], mirror.root)
    return mirror


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """`folder` over HTTP on 127.0.0.1 (a thread, stopped on exit): its URL and the paths asked for."""
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=str(folder), **kw)

        def log_message(self, format, *args):
            asked.append(f"{self.command} {urllib.parse.unquote(self.path)}")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main(argv: list[str]) -> int:
    """OUT [PYTHON...]: a mirror in OUT of each interpreter's installation (default: each of the
    stacks' versions found here); prints the two settings that point uv at it."""
    out = Path(argv[0]).resolve()
    found = [Path(p) for p in argv[1:]] or [p for p in map(interpreter_for, STACK_VERSIONS) if p is not None]
    archives = [standalone_archive(p, out / "archives") for p in found]
    meta = make_mirror(archives, out / "mirror")
    print(f"{MIRROR_VAR}={(out / 'mirror').as_uri()}")
    print(f"{JSON_VAR}={meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
