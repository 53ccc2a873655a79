"""Offline bundles: the layout, the index, and checking a bundle against both.

A bundle is a plain folder (rsync it, or `tar cf` it for sneakernet: every
big member is already compressed, so a tar costs nothing and a folder can be
checked member by member after a partial copy):

    index.json            every member with size and sha256; manifest name and hash
    manifests/NAME.toml   the manifest, its lock (and patches) at their relative places
    patches/*.diff        (where the manifest's patches_dir points, usually ../patches)
    packages/*.whl        exactly the lock's artifacts, one per pin
    git/NAME.bundle       each component's history at its pinned commit
    tool/*.whl            sd-env itself, its dependencies and uv (those not in packages/)
    torch_tpu/*.whl       Sophgo's wheel, when given
    extra/NAME/...        named extra folders (weights, datasets)

`verify` trusts nothing but index.json: each member is hashed before use,
files the index does not list are refused, and the manifest and lock copies
are checked for completeness (every pin has its wheel, every component its
history, every patch its file).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from sd_env import lockfile, manifest
from sd_env.errors import InputError, StepError
from sd_env.fsutil import sha256_file
from sd_env.report import progress

FORMAT = 1
INDEX = "index.json"
PACKAGES, GIT, TOOL, TORCH_TPU, EXTRA, MANIFESTS = "packages", "git", "tool", "torch_tpu", "extra", "manifests"


class BundleError(StepError):
    """A bundle that is not usable; the message names the bad member."""


@dataclass(frozen=True)
class Member:
    path: str  # relative, with "/" separators
    size: int
    sha256: str
    kind: str  # package, git, tool, bootstrap, torch_tpu, extra, manifest, lock, patch


@dataclass(frozen=True)
class GitHistory:
    name: str
    tag: str
    commit: str
    source: str  # "git", or "sdist": the single-commit repo imported from the PyPI sdist
    ref: str  # the ref the bundle carries (refs/tags/TAG, or HEAD for an sdist import)
    path: str  # the member, git/NAME.bundle
    shallow: tuple[str, ...] = ()  # boundary commits: the history is cut below them
    sdist_sha256: str | None = None  # of the sdist an "sdist" history was imported from


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

    def member(self, path: str) -> Member | None:
        return next((m for m in self.members if m.path == path), None)

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)

    def dump(self) -> str:
        doc = {"format": FORMAT, **asdict(self)}
        return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


def read_index(root: Path) -> Index:
    path = root / INDEX
    if not root.is_dir():
        raise InputError(f"{root}: no such bundle folder",
                         "pass the folder made by `sd-env bundle create` (untar a .tar bundle first)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise BundleError(f"{root}: no {INDEX}: not an sd-env bundle, or an incomplete copy",
                          "copy the whole bundle folder again, or re-create it") from None
    except ValueError as exc:
        raise BundleError(f"{path}: corrupt index ({exc})", "copy the bundle again, or re-create it") from None
    if doc.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {doc.get('format')!r}, this sd-env reads {FORMAT}",
                          "use the sd-env version that made the bundle (its wheel is in tool/)")
    try:
        doc.pop("format")
        doc["members"] = [Member(**m) for m in doc["members"]]
        doc["components"] = [GitHistory(**{**c, "shallow": tuple(c.get("shallow", ()))}) for c in doc["components"]]
        return Index(**doc)
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{path}: malformed index ({exc})", "re-create the bundle") from None


def check_member(root: Path, m: Member) -> None:
    """Size first (cheap, catches truncation), then the sha256."""
    path = root / m.path
    if not path.is_file():
        raise BundleError(f"bundle member {m.path} is missing from {root}",
                          "copy the bundle again (the index lists it), or re-create it")
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
    listed = {m.path for m in index.members} | {INDEX}
    found = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())
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


def complete(root: Path, index: Index) -> tuple[manifest.Manifest, lockfile.Lock | None]:
    """The bundle holds what its manifest and lock need; returns both as read from the bundle."""
    man = manifest.load(root / index.manifest_path)
    listed = {m.path for m in index.members}
    for comp in man.components:
        for patch in comp.patches:
            rel = inside(root, patch)
            if rel not in listed:
                raise BundleError(f"bundle lacks patch {rel} of {comp.name}", "re-create the bundle")
        hist = next((h for h in index.components if h.name == comp.name), None)
        if hist is None or hist.path not in listed:
            raise BundleError(f"bundle lacks the git history of {comp.name} (git/{comp.name}.bundle)",
                              "re-create the bundle (it needs each component's checkout or its git remote)")
        if comp.commit and hist.source == "git" and hist.commit != comp.commit:
            raise BundleError(f"git/{comp.name}.bundle holds {hist.commit}, the manifest pins {comp.commit}",
                              "re-create the bundle from this manifest")
    lock = None
    if man.lock is not None:
        flavour = lockfile.flavour_order(man)[0]
        lock = lockfile.read(man.lock.files[flavour])
        if index.lock_path != inside(root, lock.path):
            raise BundleError(f"the index names lock {index.lock_path}, the manifest uses {inside(root, lock.path)}",
                              "re-create the bundle")
        by_pin: dict[str, list[Member]] = {}
        for m in index.members:
            if m.kind == "package":
                got = artifact_name(Path(m.path).name)
                if got is not None:
                    by_pin.setdefault(got[0], []).append(m)
        for name, version in sorted(lock.pins.items()):
            fits = [m for m in by_pin.get(name, []) if m.sha256 in lock.hashes[name]]
            if not fits:
                raise BundleError(f"bundle lacks {name}=={version}: no file in {PACKAGES}/ has one of the lock's "
                                  "sha256 for it", "re-create the bundle (the lock changed since it was made?)")
            if len(fits) > 1:
                raise BundleError(f"bundle has {len(fits)} files for {name}=={version}: "
                                  + ", ".join(m.path for m in fits), "re-create the bundle")
    if index.torch_tpu and man.torch_tpu and man.torch_tpu.sha256:
        wheel = index.member(index.torch_tpu)
        if wheel is None or wheel.sha256 != man.torch_tpu.sha256:
            raise BundleError(f"bundle's {index.torch_tpu} is not the torch_tpu wheel the manifest pins "
                              f"(sha256 {man.torch_tpu.sha256})", "re-create the bundle with the right wheel")
    if not any(m.kind == "tool" and Path(m.path).name.startswith("sd_env-") for m in index.members):
        raise BundleError("bundle lacks sd-env's own wheel (tool/sd_env-*.whl)", "re-create the bundle")
    return man, lock


def inside(root: Path, path: Path) -> str:
    """`path` relative to the bundle root, refusing anything outside it."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise BundleError(f"{path} lies outside the bundle {root}", "re-create the bundle") from None


@dataclass(frozen=True)
class Checked:
    index: Index
    manifest: manifest.Manifest
    lock: lockfile.Lock | None
    bytes_checked: int


def verify(root: Path) -> Checked:
    """The whole bundle: index, every member, nothing unlisted, complete for its manifest and lock."""
    root = root.resolve()
    index = read_index(root)
    checked = check_members(root, index)
    extra = unlisted(root, index)
    if extra:
        raise BundleError(f"bundle has files its index does not list: {', '.join(extra[:5])}"
                          + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""),
                          "remove them (pip could pick them up) or re-create the bundle")
    man_member = index.member(index.manifest_path)
    if man_member is None or man_member.sha256 != index.manifest_sha256:
        raise BundleError(f"the index's manifest {index.manifest_path} is not listed with its hash",
                          "re-create the bundle")
    man, lock = complete(root, index)
    if man.name != index.manifest_name:
        raise BundleError(f"{index.manifest_path} is named {man.name!r}, the index says {index.manifest_name!r}",
                          "re-create the bundle")
    return Checked(index, man, lock, checked)


def same_manifest(index: Index, path: Path) -> None:
    """Refuse to install a bundle made for another manifest (both named in the error)."""
    got = sha256_file(path)
    if got != index.manifest_sha256:
        try:
            name = manifest.load(path).name
        except InputError:
            name = "?"
        raise InputError(f"the bundle was made for manifest {index.manifest_name!r} (sha256 "
                         f"{index.manifest_sha256[:12]}), not {path} ({name!r}, sha256 {got[:12]})",
                         "install without -m to use the bundle's own manifest, or make a bundle for this one")
