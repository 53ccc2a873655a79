"""Read and validate a manifest (TOML) into frozen dataclasses.

Pure: reads one file, touches nothing else but `Path.exists` for patch files.
Every problem is a ManifestError naming the file, the key and what to write.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd_env.core.names import PIN, RELEASE, canonical
from sd_env.errors import ManifestError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the 3.9 target
    import tomli as tomllib

SCHEMA = 1
BUILD_MODES = ("editable",)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?\s*[KMGTkmgt]?(i?[Bb])?")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class Component:
    name: str
    git: str
    tag: str
    version: str  # the release version, used for the sdist fallback and pin checks
    commit: str | None  # None: recorded on first clone
    patches: tuple[Path, ...]
    build: str
    sdist: bool  # may fall back to the PyPI sdist of `version`
    # The sha256 of that sdist: a fallback (or a bundle carrying the sdist) must be exactly this file.
    sdist_sha256: str | None = None


@dataclass(frozen=True)
class TorchSpec:
    requirements: tuple[str, ...]
    index: str
    fallback_index: str | None


@dataclass(frozen=True)
class WheelSpec:
    location: str  # local path (resolved against the manifest) or URL
    sha256: str | None


@dataclass(frozen=True)
class LockSpec:
    """How the closure is resolved (`sd-env lock`) and where each flavour's lock lives."""

    requirements: Path
    platform: str
    exclude_newer: str
    exclude_newer_package: dict[str, str]
    files: dict[str, Path]  # flavour ("cpu": the torch index, "pypi": the fallback) -> lock file


@dataclass(frozen=True)
class EmulatorSpec:
    """[emulator]: how `sd-env emulate` / `verify --emulate` set up the emulated device."""

    memory: str | None = None  # per-device capacity, "16G"; None: no limit
    profile: str | None = None  # a strict profile: a shipped name ("torch_tpu-2.8") or a JSON file's path


@dataclass(frozen=True)
class HubRepo:
    """[model] or [dataset]: a Hugging Face Hub repository pinned to a commit (hublock.py locks its files)."""

    kind: str  # "model" or "dataset"
    repo: str  # "CompVis/stable-diffusion-v1-4"
    revision: str  # the commit, 40 hex digits: a branch name moves
    weights: str | None = None  # a model's one weight format: "safetensors" (default) or "bin"


WEIGHT_FORMATS = ("safetensors", "bin")


@dataclass(frozen=True)
class Manifest:
    path: Path
    name: str
    python: str
    device: str
    torch: TorchSpec
    torch_tpu: WheelSpec | None
    lock: LockSpec | None
    components: tuple[Component, ...]
    description: str = ""  # what the stack is for, shown by `sd-env stacks`
    emulator: EmulatorSpec = EmulatorSpec()
    model: HubRepo | None = None
    dataset: HubRepo | None = None

    @property
    def model_lock(self) -> Path:
        """The lock of [model] and [dataset] (`sd-env model lock`), beside the manifest."""
        return self.path.with_name(f"{self.path.stem}.model.lock.json")

    def component(self, name: str) -> Component:
        for comp in self.components:
            if comp.name == name:
                return comp
        raise KeyError(name)


MAX_BYTES = 1 << 20  # a manifest is a page of TOML; anything larger is a wrong file


def load(path: Path) -> Manifest:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ManifestError(path, "", f"cannot read the manifest ({exc.strerror})",
                            "pass an existing file with -m/--manifest") from None
    if len(raw) > MAX_BYTES:
        raise ManifestError(path, "", f"larger than {MAX_BYTES // 1024} KiB: not a manifest",
                            "pass the manifest TOML with -m/--manifest")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(path, "", f"not valid TOML: {exc}",
                            "fix the syntax at the line and column named above") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path, pending: frozenset[str] = frozenset()) -> Manifest:
    """`pending`: patch file names about to be written, taken as present (repatch checks its edit early)."""
    t = _Table(data, path, "")
    t.allow("schema", "name", "description", "python", "device", "torch", "torch_tpu", "lock", "patches_dir",
            "component", "emulator", "model", "dataset")
    schema = t.get("schema", int)
    if schema != SCHEMA:
        raise ManifestError(path, "schema", f"schema {schema} is not supported",
                            f"write schema = {SCHEMA}")
    name = t.get("name", str)
    description = t.get("description", str, default="")
    python = t.get("python", str)
    if not re.fullmatch(r"3\.\d+", python):
        raise ManifestError(path, "python", f"{python!r} is not a Python minor version",
                            'write it as "3.9"')
    device = t.get("device", str)
    if not re.fullmatch(r"[a-z]+(:\d+)?", device):
        raise ManifestError(path, "device", f"{device!r} is not a torch device string",
                            'write it like "tpu:0"')

    base = path.parent
    patches_dir = base / t.get("patches_dir", str, default="../patches")
    torch = _torch(t.table("torch"))
    wheel = _wheel(t.table("torch_tpu"), base) if "torch_tpu" in data else None
    lock = _lock(t.table("lock"), base) if "lock" in data else None
    emulator = _emulator(t.table("emulator"), base) if "emulator" in data else EmulatorSpec()
    hub = {kind: _hub(t.table(kind), kind) for kind in ("model", "dataset") if kind in data}

    comps = [_component(c, patches_dir, pending) for c in t.tables("component")]
    seen: dict[str, str] = {}
    for i, comp in enumerate(comps):
        # PyPI names compare normalized: "Accelerate" and "accelerate" are one distribution.
        same = seen.get(canonical(comp.name))
        if same is not None:
            also = "" if same == comp.name else f" (as {same!r})"
            raise ManifestError(path, f"component[{i}].name", f"{comp.name!r} is declared twice{also}",
                                "give each [[component]] its own name, or delete the copy")
        seen[canonical(comp.name)] = comp.name
    return Manifest(path, name, python, device, torch, wheel, lock, tuple(comps), description, emulator,
                    hub.get("model"), hub.get("dataset"))


def _hub(t: _Table, kind: str) -> HubRepo:
    t.allow("repo", "revision", *(("weights",) if kind == "model" else ()))
    repo = t.get("repo", str)
    if not _REPO_ID.match(repo):
        raise ManifestError(t.path, t.key("repo"), f"{repo!r} is not a Hub repository id",
                            'write it as OWNER/NAME, e.g. "CompVis/stable-diffusion-v1-4"')
    revision = t.get("revision", str)
    if not _COMMIT.match(revision):
        raise ManifestError(t.path, t.key("revision"), f"{revision!r} is not a commit (a branch or tag moves)",
                            "write the commit's 40 hex digits (the repository's history on the Hub, or the "
                            "snapshot folder name in a Hub cache: snapshots/COMMIT)")
    weights = t.get("weights", str, default="safetensors") if kind == "model" else None
    if weights is not None and weights not in WEIGHT_FORMATS:
        raise ManifestError(t.path, t.key("weights"), f"unknown weight format {weights!r}",
                            f"write one of: {', '.join(WEIGHT_FORMATS)}")
    return HubRepo(kind, repo, revision, weights)


def _emulator(t: _Table, base: Path) -> EmulatorSpec:
    t.allow("memory", "profile")
    memory = t.get("memory", str, default=None)
    if memory is not None and not _SIZE.fullmatch(memory):
        raise ManifestError(t.path, t.key("memory"), f"{memory!r} is not a size", 'write it like "16G" or "512M"')
    profile = t.get("profile", str, default=None)
    if profile is not None and profile.endswith(".json"):
        profile = str(base / profile)  # a file of the user's, relative to the manifest
    return EmulatorSpec(memory, profile)


def _torch(t: _Table) -> TorchSpec:
    t.allow("requirements", "index", "fallback_index")
    reqs = t.get("requirements", list)
    for i, req in enumerate(reqs):
        _pinned(t, f"requirements[{i}]", req)
    return TorchSpec(tuple(reqs), t.get("index", str), t.get("fallback_index", str, default=None))


FLAVOURS = ("cpu", "pypi")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _lock(t: _Table, base: Path) -> LockSpec:
    t.allow("requirements", "platform", "exclude_newer", "exclude_newer_package", "files")
    stamps = {"exclude_newer": t.get("exclude_newer", str)}
    per_package = t.table("exclude_newer_package", required=False)
    for name in per_package.names():
        stamps[f"exclude_newer_package.{name}"] = per_package.get(name, str)
    for key, stamp in stamps.items():
        if not _STAMP.match(stamp):
            raise ManifestError(t.path, t.key(key), f"{stamp!r} is not a UTC timestamp",
                                'write it like "2023-08-31T00:00:00Z"')
    files_t = t.table("files")
    files = {}
    for flavour in files_t.names():
        if flavour not in FLAVOURS:
            raise ManifestError(t.path, files_t.key(flavour), "unknown torch flavour",
                                f"use one of: {', '.join(FLAVOURS)}")
        files[flavour] = base / files_t.get(flavour, str)
    if not files:
        raise ManifestError(t.path, t.key("files"), "lists no lock file",
                            'add pypi = "<name>.pypi.lock.txt" (and cpu = ... for the CPU build), '
                            "then run `sd-env lock`")
    platform = t.get("platform", str, default="x86_64-unknown-linux-gnu")
    return LockSpec(base / t.get("requirements", str), platform, stamps["exclude_newer"],
                    {k: per_package.get(k, str) for k in per_package.names()}, files)


def _wheel(t: _Table, base: Path) -> WheelSpec:
    t.allow("wheel", "sha256")
    location = t.get("wheel", str)
    if "://" not in location:
        location = str((base / location).resolve())
    sha = t.get("sha256", str, default=None) or None
    if sha is not None and not _SHA256.match(sha):
        raise ManifestError(t.path, t.key("sha256"), "not a sha256 (64 lowercase hex digits)",
                            "paste the output of `sha256sum` for the wheel, or delete the key")
    return WheelSpec(location, sha)


def _component(t: _Table, patches_dir: Path, pending: frozenset[str]) -> Component:
    t.allow("name", "git", "tag", "version", "commit", "patches", "build", "sdist", "sdist_sha256")
    name = t.get("name", str)
    if not _NAME.match(name):
        raise ManifestError(t.path, t.key("name"), f"{name!r} is not a distribution name",
                            'use the PyPI name, e.g. "accelerate"')
    git = t.get("git", str)
    if not re.match(r"^(https?://|git@|ssh://|file://|/)", git):
        raise ManifestError(t.path, t.key("git"), f"{git!r} is not a git URL",
                            'write the clone URL, e.g. "https://github.com/OWNER/NAME.git"')
    version = t.get("version", str)
    if not _is_version(version):
        raise ManifestError(t.path, t.key("version"), f"{version!r} is not a version",
                            'write the release version, e.g. "0.16.0" (the tag goes in `tag`)')
    commit = t.get("commit", str, default=None)
    if commit is not None and not _COMMIT.match(commit):
        raise ManifestError(t.path, t.key("commit"), f"{commit!r} is not a full commit id",
                            "write all 40 hex digits (`git rev-parse TAG^{commit}`), or delete the key "
                            "to record it on first clone")
    patches = []
    for i, rel in enumerate(t.get("patches", list, default=[])):
        if not isinstance(rel, str):
            raise ManifestError(t.path, t.key(f"patches[{i}]"), "must be a file name",
                                'write it as a string, e.g. "accelerate-0.16.0-tpu.diff"')
        p = patches_dir / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ManifestError(t.path, t.key(f"patches[{i}]"), f"{rel!r} is outside the patches folder",
                                f"put the patch in {patches_dir} and write its file name")
        if not p.is_file() and rel not in pending:
            raise ManifestError(t.path, t.key(f"patches[{i}]"), f"no patch file at {p}",
                                f"put the patch in {patches_dir} or correct the name")
        patches.append(p)
    build = t.get("build", str, default="editable")
    if build not in BUILD_MODES:
        raise ManifestError(t.path, t.key("build"), f"unknown build mode {build!r}",
                            f"write one of: {', '.join(BUILD_MODES)}")
    sdist_sha256 = t.get("sdist_sha256", str, default=None)
    if sdist_sha256 is not None and not _SHA256.match(sdist_sha256):
        raise ManifestError(t.path, t.key("sdist_sha256"), "not a sha256 (64 lowercase hex digits)",
                            f"paste the sha256 PyPI lists for {name}-{version}.tar.gz, or delete the key")
    return Component(name, git, t.get("tag", str), version, commit, tuple(patches), build,
                     t.get("sdist", bool, default=True), sdist_sha256)


def _is_version(text: str) -> bool:
    if RELEASE.fullmatch(text):  # the usual case, without importing packaging (names.py)
        return True
    from packaging.version import InvalidVersion, Version

    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def _pinned(t: _Table, key: str, req: object) -> None:
    if isinstance(req, str) and PIN.fullmatch(req):  # the usual case, without importing packaging (names.py)
        return
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    try:
        parsed = Requirement(str(req))
        specs = list(parsed.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise InvalidRequirement("not pinned")
        Version(specs[0].version)
    except (InvalidRequirement, InvalidVersion):
        raise ManifestError(t.path, t.key(key), f"{req!r} is not an exact pin",
                            'write NAME==VERSION, e.g. "torch==2.1.0"') from None


# How TOML calls each value type, and an example to put in a hint.
_TOML_TYPES: dict[type, tuple[str, str]] = {
    str: ("a string", '"..."'), int: ("an integer", "1"), bool: ("a boolean", "true"),
    list: ("an array", "[...]"), dict: ("a table", "{...}"), float: ("a float", "1.0"),
}


def _toml_type(kind: type) -> str:
    for python_type, (name, _example) in _TOML_TYPES.items():
        if issubclass(kind, python_type) and not (python_type is int and kind is bool):
            return name
    return kind.__name__  # dates and times


class _Table:
    """A TOML table with its dotted key path, for error messages."""

    def __init__(self, data: Any, path: Path, prefix: str) -> None:
        if not isinstance(data, dict):
            header = re.sub(r"\[\d+\]$", "", prefix)  # component[0] -> component
            brackets = f"[[{header}]]" if header != prefix else f"[{prefix}]"
            raise ManifestError(path, prefix, f"must be a table, not {_toml_type(type(data))}",
                                f"write it as a {brackets} table")
        self.data, self.path, self.prefix = data, path, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def names(self) -> list[str]:
        return list(self.data)

    def allow(self, *known: str) -> None:
        for k in self.data:
            if k not in known:
                # A key already written is no fix: [torch_cpu] next to [torch_tpu] means [torch].
                unused = [name for name in known if name not in self.data]
                close = difflib.get_close_matches(k, unused, n=1) or difflib.get_close_matches(k, known, n=1)
                fix = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                raise ManifestError(self.path, self.key(k), "unknown key", fix)

    def get(self, name: str, kind: type, default: Any = ...) -> Any:
        want, example = _TOML_TYPES[kind]
        shape = f"a [{self.key(name)}] table" if kind is dict else f"{name} = {example}"
        if name not in self.data:
            if default is ...:
                raise ManifestError(self.path, self.key(name), "missing", f"add {shape}")
            return default
        value = self.data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            fix = f"write it as {shape}" if kind is dict else f"write it as {want}, e.g. {shape}"
            raise ManifestError(self.path, self.key(name), f"must be {want}, not {_toml_type(type(value))}",
                                fix)
        return value

    def table(self, name: str, required: bool = True) -> _Table:
        if name not in self.data and not required:
            return _Table({}, self.path, self.key(name))
        return _Table(self.get(name, dict), self.path, self.key(name))

    def tables(self, name: str) -> list[_Table]:
        if isinstance(self.data.get(name), dict):
            raise ManifestError(self.path, name, "must be an array of tables, not a table",
                                f"write each one under [[{name}]] (two brackets)")
        items = self.get(name, list)
        if not items:
            raise ManifestError(self.path, name, "no components",
                                f"add at least one [[{name}]] table")
        return [_Table(item, self.path, f"{name}[{i}]") for i, item in enumerate(items)]
