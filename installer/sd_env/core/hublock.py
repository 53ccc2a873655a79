"""The model lock: the exact files of the manifest's [model] (and [dataset]) at their pinned commit.

As the era lock pins every package by hash, this pins every file a run reads from the Hugging
Face Hub: its path in the repository, size, sha256, and the ETag the Hub's resolve endpoint
answers for it (an LFS file's sha256, else its git blob id: the blob's name in a Hub cache).
`sd-env model lock` writes it (models.py asks the target's huggingface_hub for the listing);
`model fetch`, bundles and `train` read it. Pure: the file format and which files a diffusers
pipeline needs, no network and no disk but the lock file itself.

Which files: model_index.json, then each component folder it names (scheduler, text_encoder,
tokenizer, unet, vae; SD 1.4's also names safety_checker and feature_extractor, which
`from_pretrained` loads too), each with its configs and exactly one weight format: fp32
safetensors by default (no pickle to execute on load, the LoRA script trains from fp32, and
diffusers 0.20 and transformers 4.29 load it first), or `bin` when the manifest says so. fp16
and non_ema variants, other formats (Flax, ONNX, .ckpt) and files outside those folders are
left out, and the lock says so. A dataset repository is locked whole (but .gitattributes).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sd_env.core.manifest import HubRepo, Manifest
from sd_env.errors import InputError
from sd_env.system.fsutil import path_problem

VERSION = 1
MODEL_INDEX = "model_index.json"
# Weight files by suffix: every format a Hub model repository carries its tensors in.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".msgpack", ".h5", ".onnx", ".pb", ".pt", ".pth", ".gguf")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_ETAG = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Listed:
    """One file of a repository as the Hub lists it (the lock probe's answer)."""

    path: str
    size: int
    sha256: str  # LFS: from the listing; else computed from the file the probe downloaded
    etag: str  # LFS: the sha256; else the git blob id
    lfs: bool


@dataclass(frozen=True)
class LockedFile:
    path: str
    size: int
    sha256: str
    etag: str
    lfs: bool


@dataclass(frozen=True)
class LockedRepo:
    kind: str  # "model" or "dataset"
    repo: str
    revision: str
    weights: str | None
    files: tuple[LockedFile, ...]
    note: str = ""  # what the selection took and left out, in words
    endpoint: str = ""  # where it was locked from (a mirror is fine: the hashes are what count)
    locked: str = ""  # when (UTC)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.repo}@{self.revision[:12]}"

    def matches(self, spec: HubRepo) -> bool:
        return (self.repo, self.revision, self.weights) == (spec.repo, spec.revision, spec.weights)


@dataclass(frozen=True)
class HubLock:
    path: Path
    model: LockedRepo | None = None
    dataset: LockedRepo | None = None

    def repos(self) -> list[LockedRepo]:
        return [r for r in (self.model, self.dataset) if r is not None]

    def dump(self) -> str:
        doc: dict[str, Any] = {"version": VERSION}
        for repo in self.repos():
            item = asdict(repo)
            item["files"] = [asdict(f) for f in repo.files]
            doc[repo.kind] = item
        return json.dumps(doc, indent=1) + "\n"


def is_weight(path: str) -> bool:
    return path.endswith(WEIGHT_SUFFIXES)


def _plain_weight(name: str, suffix: str) -> bool:
    """`diffusion_pytorch_model.safetensors`, `model-00001-of-00002.safetensors`: no variant
    (`.fp16.`, `.non_ema.`) between the stem and the suffix."""
    return name.endswith(suffix) and "." not in name[: -len(suffix)]


def select_model(listing: list[Listed], model_index: dict[str, Any], weights: str) -> tuple[list[Listed], str]:
    """The files a diffusers pipeline loads: model_index.json and each component folder it names,
    with exactly one weight format. An error names a folder that lacks that format."""
    suffix = f".{weights}"
    by_path = {f.path: f for f in listing}
    if MODEL_INDEX not in by_path:
        raise InputError(f"the repository has no {MODEL_INDEX} at this revision: not a diffusers pipeline",
                         "pin a revision of a diffusers model repository (model_index.json at its top)")
    folders = sorted(k for k, v in model_index.items()
                     if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and None not in v)
    chosen = [by_path[MODEL_INDEX]]
    for folder in folders:
        inside = [f for f in listing if f.path.startswith(folder + "/") and "/" not in f.path[len(folder) + 1:]]
        names = {f.path: f.path.rsplit("/", 1)[1] for f in inside}
        found = [f for f in inside if is_weight(f.path)]
        wanted = [f for f in found if _plain_weight(names[f.path], suffix)]
        if found and not wanted:
            other = sorted({"." + names[f.path].rsplit(".", 1)[1] for f in found})
            raise InputError(f"{folder}/ has no plain {suffix} weights at this revision (it has {', '.join(other)} "
                             "files)", f"set weights = \"{'bin' if weights == 'safetensors' else 'safetensors'}\" in "
                             "the manifest's [model] if that is the format you want, or pin a revision that has it")
        if not inside:
            raise InputError(f"{MODEL_INDEX} names {folder}, but the repository has no {folder}/ folder",
                             "pin another revision: this one is not a complete pipeline")
        # Configs and tokenizer files; a shard index only of the chosen, plain format.
        plain = [f for f in inside if not is_weight(f.path)
                 and not (f.path.endswith(".index.json") and not _plain_weight(names[f.path][:-11], suffix))]
        chosen += sorted(plain + wanted, key=lambda f: f.path)
    left = sorted(set(by_path) - {f.path for f in chosen})
    left_weights = [p for p in left if is_weight(p)]
    note = (f"{weights} weights without variant, for {', '.join(folders)}; left out {len(left)} files"
            + (f" ({len(left_weights)} weight files of other formats or variants, e.g. {left_weights[0]})"
               if left_weights else ""))
    return chosen, note


def select_dataset(listing: list[Listed]) -> tuple[list[Listed], str]:
    chosen = sorted((f for f in listing if f.path != ".gitattributes"), key=lambda f: f.path)
    if not chosen:
        raise InputError("the dataset repository has no files at this revision", "pin another revision")
    return chosen, f"the whole repository, {len(chosen)} files"


def locked(spec: HubRepo, files: list[Listed], note: str, endpoint: str, when: str) -> LockedRepo:
    return LockedRepo(spec.kind, spec.repo, spec.revision, spec.weights,
                      tuple(LockedFile(f.path, f.size, f.sha256, f.etag, f.lfs) for f in files), note, endpoint, when)


def read(path: Path) -> HubLock:
    """The lock, every path in it confined and every hash well formed (a path from a lock becomes a
    path in the Hub cache and in bundles)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no model lock", "run `sd-env model lock` where the Hub (or a mirror: "
                         "HF_ENDPOINT) is reachable, and keep the file beside the manifest") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable model lock ({exc})", "run `sd-env model lock` again") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise InputError(f"{path}: model lock version {doc.get('version') if isinstance(doc, dict) else None!r}, "
                         f"this sd-env reads {VERSION}", "run `sd-env model lock` again")
    repos = {}
    for kind in ("model", "dataset"):
        if kind in doc:
            repos[kind] = _repo(path, kind, doc[kind])
    return HubLock(path, repos.get("model"), repos.get("dataset"))


def _repo(path: Path, kind: str, raw: Any) -> LockedRepo:
    def bad(why: str) -> InputError:
        return InputError(f"{path}: {kind}: {why}", "the lock was edited or made by a broken tool: run "
                          "`sd-env model lock` again")

    try:
        files = tuple(LockedFile(**f) for f in raw.pop("files"))
        repo = LockedRepo(**{**raw, "files": files})
    except (TypeError, KeyError, AttributeError) as exc:
        raise bad(f"malformed ({exc})") from None
    if repo.kind != kind or not _COMMIT.match(str(repo.revision)):
        raise bad("its kind or revision is malformed")
    seen = set()
    for f in files:
        why = path_problem(f.path)
        if why or f.path in seen:
            raise bad(f"file {f.path!r} is refused: {why or 'listed twice'}")
        seen.add(f.path)
        if not (isinstance(f.size, int) and f.size >= 0 and _SHA256.match(str(f.sha256))
                and _ETAG.match(str(f.etag))):
            raise bad(f"file {f.path}: its size, sha256 or etag is malformed")
        if f.lfs and f.etag != f.sha256:
            raise bad(f"file {f.path}: an LFS file's etag is its sha256")
    return repo


def for_manifest(man: Manifest, kind: str) -> LockedRepo:
    """The locked [model] or [dataset] of `man`, refusing a lock made for another pin."""
    spec = man.model if kind == "model" else man.dataset
    if spec is None:
        raise InputError(f"{man.path} names no [{kind}]", f"add a [{kind}] table (repo, revision) to the manifest")
    lock = read(man.model_lock)
    got = lock.model if kind == "model" else lock.dataset
    if got is None or not got.matches(spec):
        have = f"{got.repo}@{got.revision} ({got.weights or 'files'})" if got else "nothing"
        raise InputError(f"{man.model_lock} locks {have} for [{kind}], the manifest pins {spec.repo}@{spec.revision}"
                         + (f" ({spec.weights})" if spec.weights else ""),
                         "run `sd-env model lock` to lock what the manifest names")
    return got
