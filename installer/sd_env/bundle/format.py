"""Offline bundles: the layout, the index, and checking a bundle against both.

A bundle is a plain folder (rsync it, or `tar cf` it for sneakernet: every
big member is already compressed, so a tar costs nothing and a folder can be
checked member by member after a partial copy):

    index.json            every member with size and sha256; manifest name and hash
    index.json.sig        optional: an OpenSSH signature of index.json (bundle/trust.py)
    manifests/NAME.toml   the manifest, its lock (and patches) at their relative places
    patches/*.diff        (where the manifest's patches_dir points, usually ../patches)
    packages/*.whl        exactly the lock's artifacts, one per pin
    git/NAME.bundle       a component's history at the commit the manifest pins
    sdist/NAME-V.tar.gz   or its PyPI sdist, when the manifest pins that (sdist_sha256)
    tool/*.whl            sd-env itself, its dependencies and uv (those not in packages/)
    torch_tpu/*.whl       Sophgo's wheel, when given
    python/cpython-*.tar.gz  a standalone CPython of the manifest's version (python-build-standalone's
                          archive, as uv downloads it), for hosts without one (pythons.py)
    extra/NAME/...        named extra folders (weights, datasets)
    model/PATH            the model lock's files (bundle create --with-model), as its paths in the repository
    data/PATH             the pinned dataset's locked files (--with-data)

`verify` trusts index.json only as far as its anchor goes (its sha256, the
bundle id, or a signature: bundle/trust.py), and the manifest only as far as a
trusted checkout's copy matches it. Every member path is confined (relative,
normalised, under its kind's folder, no link on the way), each member is
hashed before use, files the index does not list are refused, and the manifest
and lock copies are checked for completeness (every pin has its wheel, every
component its history or sdist at the manifest's pin, every patch its file).
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from sd_env.errors import InputError, StepError
from sd_env.report import human, progress
from sd_env.system.fsutil import path_problem, sha256_file
from sd_env.target.pythons import ARCHIVE_NAME

FORMAT = 3  # 2: member paths confined, the tool venv's wheels listed, sdists carried as files; 3: a Python
READS = (2, 3)  # a format-2 index is a format-3 one without an interpreter
INDEX = "index.json"
SIGNATURE = "index.json.sig"  # beside the index, never listed in it (it signs the index)
PACKAGES, GIT, SDIST, TOOL, TORCH_TPU, EXTRA, MANIFESTS, PYTHON, MODEL, DATA = (
    "packages", "git", "sdist", "tool", "torch_tpu", "extra", "manifests", "python", "model", "data")
# Each kind of member lives in its own folder; the project files (manifest, lock, patches, the
# model lock) keep their places relative to the manifest, anywhere but in those folders.
FOLDERS = {"package": PACKAGES, "git": GIT, "sdist": SDIST, "tool": TOOL, "torch_tpu": TORCH_TPU, "extra": EXTRA,
           "python": PYTHON, "model": MODEL, "data": DATA}
PROJECT_KINDS = ("manifest", "lock", "patch", "model-lock")
# bootstrap.sh and what it sources: `OUT/bootstrap.sh` installs from the bundle it lies in,
# so a host (or an image build) needs nothing from sd-env's repository.
BOOTSTRAP = ("bootstrap.sh", "scripts/find-python.sh", "scripts/bundle-tool.sh")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
# The standalone build's archive name, pythons.ARCHIVE_NAME (bundle-tool.sh checks the same before unpacking it).
INTERPRETER = re.compile(rf"^{PYTHON}/{ARCHIVE_NAME}$")


class BundleError(StepError):
    """A bundle that is not usable; the message names the bad member."""


@dataclass(frozen=True)
class Member:
    path: str  # relative, with "/" separators
    size: int
    sha256: str
    kind: str  # package, git, sdist, tool, bootstrap, torch_tpu, python, extra, model, data, manifest, lock, patch,
    # model-lock


@dataclass(frozen=True)
class GitHistory:
    """A component's source in the bundle: its git history, or (source "sdist") its PyPI sdist."""

    name: str
    tag: str
    commit: str  # the tag's commit; for an sdist, the commit its import makes (the same every time)
    source: str  # "git", or "sdist"
    ref: str  # the ref the git bundle carries (refs/tags/TAG); "" for an sdist
    path: str  # the member: git/NAME.bundle, or sdist/NAME-VERSION.tar.gz
    shallow: tuple[str, ...] = ()  # boundary commits: the history is cut below them
    sdist_sha256: str | None = None  # of the sdist member (source "sdist")


@dataclass
class Index:
    manifest_name: str
    manifest_path: str
    manifest_sha256: str
    lock_path: str | None
    platform: str | None
    python: str
    members: list[Member] = field(default_factory=list)
    components: list[GitHistory] = field(default_factory=list)
    torch_tpu: str | None = None
    extras: dict[str, str] = field(default_factory=dict)  # name -> folder inside the bundle
    created: str = ""
    sd_env_version: str = ""
    # The wheels of sd-env's own venv, by member path (tool/, and packages/ for those the lock has
    # too): bootstrap installs exactly these, by path and hash, and nothing else it finds there.
    tool: list[str] = field(default_factory=list)
    # The standalone Python's archive (member path under python/), unpacked on a host without
    # Python `python`; None: the bundle carries none (the host needs its own).
    interpreter: str | None = None

    def member(self, path: str) -> Member | None:
        return next((m for m in self.members if m.path == path), None)

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)

    def dump(self) -> str:
        doc = {"format": FORMAT, **asdict(self)}
        return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def read_index(root: Path, raw: bytes | None = None) -> Index:
    """The index of the bundle at `root` (from `raw`, the bytes an anchor check already read, when
    given), with every path in it confined: a problem names the path and the rule."""
    path = root / INDEX
    if not root.is_dir():
        raise InputError(f"{root}: no such bundle folder",
                         "pass the folder made by `sd-env bundle create` (untar a .tar bundle first)")
    if raw is None:
        try:
            raw = read_plain_file(root, INDEX)
        except FileNotFoundError:
            raise BundleError(f"{root}: no {INDEX}: not an sd-env bundle, or an incomplete copy",
                              "copy the whole bundle folder again, or re-create it") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise BundleError(f"{path}: corrupt index ({exc})", "copy the bundle again, or re-create it") from None
    if not isinstance(doc, dict) or doc.get("format") not in READS:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise BundleError(f"{path}: bundle format {got!r}, this sd-env reads {' or '.join(map(str, READS))}",
                          "use the sd-env version that made the bundle (its wheel is in tool/), or re-create "
                          "the bundle with this one")
    try:
        doc.pop("format")
        doc["members"] = [Member(**m) for m in doc["members"]]
        doc["components"] = [GitHistory(**{**c, "shallow": tuple(c.get("shallow", ()))}) for c in doc["components"]]
        index = Index(**doc)
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{path}: malformed index ({exc})", "re-create the bundle") from None
    confine(index, path)
    return index


def read_plain_file(root: Path, rel: str) -> bytes:
    """The bytes of `root/rel`, refusing a link anywhere on the way or anything but a file."""
    _no_links(root, rel)
    return (root / rel).read_bytes()



def confine(index: Index, where: Path) -> None:
    """Every path the index names is a confined member path of the right kind, listed once."""
    def bad(what: str, rel: object, why: str) -> BundleError:
        return BundleError(f"{where}: {what} {rel!r} is refused: {why}",
                           "the index was edited or made by a broken tool: re-create the bundle")

    seen: dict[str, Member] = {}
    for m in index.members:
        why = path_problem(m.path)
        if why:
            raise bad("member", m.path, why)
        if m.path in seen:
            raise bad("member", m.path, "listed twice")
        if m.path in (INDEX, SIGNATURE):
            raise bad("member", m.path, "the index and its signature are never members")
        top = m.path.split("/")[0]
        if m.kind in FOLDERS:
            if top != FOLDERS[m.kind] or "/" not in m.path:
                raise bad("member", m.path, f"a {m.kind} member lives under {FOLDERS[m.kind]}/")
        elif m.kind == "bootstrap":
            if m.path not in BOOTSTRAP:
                raise bad("member", m.path, f"the bootstrap members are {', '.join(BOOTSTRAP)}")
        elif m.kind in PROJECT_KINDS:
            if top in FOLDERS.values() or m.path in BOOTSTRAP:
                raise bad("member", m.path, f"a {m.kind} file cannot live under {top}/")
        else:
            raise bad("member", m.path, f"unknown kind {m.kind!r}")
        if not (isinstance(m.size, int) and m.size >= 0 and isinstance(m.sha256, str)
                and re.fullmatch(r"[0-9a-f]{64}", m.sha256)):
            raise bad("member", m.path, "its size or sha256 is malformed")
        seen[m.path] = m
    folders = {"/".join(p.split("/")[:i]) for p in seen for i in range(1, p.count("/") + 1)}
    clash = sorted(folders & set(seen))
    if clash:
        raise bad("member", clash[0], "it is also the folder of another member")

    def member_of(what: str, rel: object, kinds: tuple[str, ...]) -> Member:
        m = seen.get(rel) if isinstance(rel, str) else None
        if m is None or m.kind not in kinds:
            raise bad(what, rel, f"not a listed {' or '.join(kinds)} member")
        return m

    member_of("the manifest", index.manifest_path, ("manifest",))
    if index.lock_path is not None:
        member_of("the lock", index.lock_path, ("lock",))
    if index.torch_tpu is not None:
        member_of("the torch_tpu wheel", index.torch_tpu, ("torch_tpu",))
    extra_wheels = [m.path for m in seen.values() if m.kind == "torch_tpu" and m.path != index.torch_tpu]
    if extra_wheels:
        raise bad("member", extra_wheels[0], "a torch_tpu member the index does not name as its wheel")
    if index.interpreter is not None:
        member_of("the interpreter", index.interpreter, ("python",))
        if not INTERPRETER.match(index.interpreter):
            raise bad("the interpreter", index.interpreter, "not python/cpython-X.Y.Z...tar.gz")
    extra_pythons = [m.path for m in seen.values() if m.kind == "python" and m.path != index.interpreter]
    if extra_pythons:
        raise bad("member", extra_pythons[0], "a python member the index does not name as its interpreter")
    names = set()
    for hist in index.components:
        if hist.source not in ("git", "sdist") or not _NAME.match(str(hist.name)) or hist.name in names:
            raise bad("component", hist.name, "a malformed or repeated source entry")
        names.add(hist.name)
        kind = "git" if hist.source == "git" else "sdist"
        member_of(f"{hist.name}'s {kind}", hist.path, (kind,))
        commits = [hist.commit] if kind == "git" else []
        if not all(isinstance(c, str) and re.fullmatch(r"[0-9a-f]{40}", c) for c in [*commits, *hist.shallow]):
            raise bad("component", hist.name, "a commit id that is not 40 hex digits")
    for rel in index.tool:
        member_of("the tool wheel", rel, ("tool", "package"))
        if not rel.endswith(".whl"):
            raise bad("the tool wheel", rel, "not a wheel")
    for name, folder in index.extras.items():
        if not _NAME.match(str(name)) or folder != f"{EXTRA}/{name}":
            raise bad("extra", folder, f"extras live at {EXTRA}/NAME")


def _no_links(root: Path, rel: str) -> None:
    """`root/rel` and each folder on the way to it are what they claim, not symbolic links."""
    here = root
    for part in rel.split("/"):
        here = here / part
        if stat.S_ISLNK(os.lstat(here).st_mode):  # FileNotFoundError: the caller says "missing"
            raise BundleError(f"bundle member {rel}: {here.relative_to(root)} is a symbolic link",
                              "a bundle holds plain files only: copy it with links resolved (cp -rL, rsync -L) "
                              "or re-create it")
    if not stat.S_ISREG(os.lstat(here).st_mode):
        raise BundleError(f"bundle member {rel} is not a regular file", "copy the bundle again, or re-create it")


def check_member(root: Path, m: Member) -> None:
    """Size first (cheap, catches truncation), then the sha256."""
    path = root / m.path
    try:
        _no_links(root, m.path)
    except (FileNotFoundError, NotADirectoryError):
        raise BundleError(f"bundle member {m.path} is missing from {root}",
                          "copy the bundle again (the index lists it), or re-create it") from None
    size = path.stat().st_size
    if size != m.size:
        raise BundleError(f"bundle member {m.path} is {size} bytes, the index says {m.size} (truncated or changed)",
                          "copy that file again from the original bundle")
    got = sha256_file(path)
    if got != m.sha256:
        raise BundleError(f"bundle member {m.path} has sha256 {got}, the index says {m.sha256} (corrupt or tampered)",
                          "copy that file again from the original bundle; do not edit bundle members")


def check_members(root: Path, index: Index, kinds: Iterable[str] | None = None) -> int:
    """Every member (of `kinds`, or all) against the index; returns the bytes checked."""
    wanted = [m for m in index.members if kinds is None or m.kind in kinds]
    total = sum(m.size for m in wanted)
    done, last = 0, time.monotonic()
    for m in wanted:
        check_member(root, m)
        done += m.size
        if time.monotonic() - last > 5:
            last = time.monotonic()
            progress(f"checked {human(done)} of {human(total)}")
    return total


def unlisted(root: Path, index: Index) -> list[str]:
    """Files (and links of any kind) the index does not list; links are never followed."""
    listed = {m.path for m in index.members} | {INDEX, SIGNATURE}
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        found += [(base / name).relative_to(root).as_posix() for name in files]
        found += [(base / name).relative_to(root).as_posix() + "/" for name in dirs if (base / name).is_symlink()]
    return sorted(p for p in found if p not in listed)


def artifact_name(filename: str) -> tuple[str, str] | None:
    """(canonical name, version) of a wheel or sdist file name, None for anything else."""
    try:
        if filename.endswith(".whl"):
            name, version, _build, _tags = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except ValueError:
        return None
    return canonicalize_name(name), str(version)
