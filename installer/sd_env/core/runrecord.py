"""The record of a training run (`sd-env train` writes OUTPUT/sd-env-run.json) and `sd-env run-diff`.

A trained LoRA should say what made it: the manifest, lock, model lock and patches by sha256, each
component's commit, the model's revision and file hashes, a hash of the training data as it was
read (every file by name and content, metadata.jsonl and its captions included), the script and
its arguments, the seed, the device asked for and the one measured, torch_tpu's version, the
precision really used (precision.py's watcher), when it started and finished, the final loss and
the weights' sha256.

`diff` sorts what differs between two records into inputs (what made the run), outcome (what it
gave) and circumstances (when and where: times, host, output folder, paths of the same bytes).
Two runs on the same inputs that give the same outcome are "identical but for" the circumstances.
Pure but for reading and writing records and hashing files.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd_env import __version__
from sd_env.core import lockfile, state
from sd_env.core.hublock import LockedRepo
from sd_env.core.manifest import Manifest
from sd_env.errors import InputError
from sd_env.system import fsutil
from sd_env.system.fsutil import sha256_file
from sd_env.system.paths import Paths

RECORD = "sd-env-run.json"
VERSION = 1
# Script flags whose values are where things are on this machine: the record compares what they
# point to (model, data, output), never the path itself.
PLACES = {"--pretrained_model_name_or_path": "<model>", "--train_data_dir": "<data>", "--dataset_name": "<data>",
          "--output_dir": "<output>"}
# Circumstances: when and where, not what. Keys as dotted prefixes.
WHERE = ("run_id", "started", "finished", "seconds", "host", "output", "argv", "model.path", "data.path",
         "script.path", "manifest.path")
OUTCOME = ("final_loss", "losses", "weights", "device.measured", "precision")
PACKAGES = ("torch", "torchvision", "numpy", "accelerate", "diffusers", "transformers", "huggingface-hub",
            "datasets", "safetensors", "torch-tpu")


def fingerprint(folder: Path) -> dict[str, Any]:
    """Every file under `folder` (hidden ones aside, as the datasets loaders skip them) by sha256, and
    one sha256 over the sorted list (`sha256sum` lines): one changed caption changes it."""
    files = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        files[rel.as_posix()] = sha256_file(path)
        total += path.stat().st_size
    listing = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(files.items()))
    return {"sha256": hashlib.sha256(listing.encode()).hexdigest(), "files": len(files), "bytes": total,
            "file_sha256": files}


def inputs_of(folder: Path, repo: LockedRepo | None, **extra: Any) -> dict[str, Any]:
    """The model or the data: pinned (repo, revision, the lock's hashes, checked before use) or a folder
    (hashed now)."""
    if repo is not None:
        files = {f.path: f.sha256 for f in repo.files}
        listing = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(files.items()))
        return {"source": "pinned", "repo": repo.repo, "revision": repo.revision, "weights": repo.weights,
                "path": str(folder), "sha256": hashlib.sha256(listing.encode()).hexdigest(), "files": len(files),
                "bytes": repo.size, "file_sha256": files, **extra}
    return {"source": "folder", "path": str(folder), **fingerprint(folder), **extra}


def environment(man: Manifest, paths: Paths, versions: dict[str, str]) -> dict[str, Any]:
    """What the environment is, by hash: manifest, locks, patches, component commits, package versions."""
    def digest(path: Path) -> str | None:
        return sha256_file(path) if path.is_file() else None

    lock = man.lock.files[lockfile.flavour_order(man)[0]] if man.lock else None
    recorded = state.load(paths.state).components
    return {
        "manifest": {"name": man.name, "path": str(man.path), "sha256": digest(man.path)},
        "lock": {"file": lock.name, "sha256": digest(lock)} if lock else None,
        "model_lock": {"file": man.model_lock.name, "sha256": digest(man.model_lock)},
        "patches": {p.name: digest(p) for c in man.components for p in c.patches},
        "components": {name: {"tag": c.tag, "commit": c.commit, "source": c.source,
                              "patches": {p.name: p.sha256 for p in c.patches}} for name, c in recorded.items()},
        "packages": {name: versions.get(name) for name in PACKAGES},
    }


def build(env: dict[str, Any], model: dict[str, Any], data: dict[str, Any], script: Path, argv: list[str],
          started: str, finished: str, seconds: float, output: Path, device: dict[str, Any],
          precision: dict[str, Any], losses: list[float], weights: Path) -> dict[str, Any]:
    places = []
    for i, arg in enumerate(argv):
        flag = arg.split("=", 1)[0]
        if flag in PLACES and "=" in arg:
            places.append(f"{flag}={PLACES[flag]}")
        elif i and argv[i - 1] in PLACES:
            places.append(PLACES[argv[i - 1]])
        else:
            places.append(arg)
    seeds = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--seed"]
    seeds += [a.split("=", 1)[1] for a in argv if a.startswith("--seed=")]
    seed = seeds[-1] if seeds else None  # the script's argparse takes the last one given
    return {"version": VERSION, "run_id": str(uuid.uuid4()), "sd_env": __version__, "host": socket.gethostname(),
            "started": started, "finished": finished, "seconds": round(seconds, 1), "output": str(output),
            **env, "model": model, "data": data,
            "script": {"path": str(script), "sha256": sha256_file(script)}, "arguments": places, "argv": argv,
            "seed": seed, "device": device, "precision": precision,
            "final_loss": losses[-1] if losses else None, "losses": len(losses),
            "weights": {"file": weights.name, "sha256": sha256_file(weights)}}


def write(output: Path, record: dict[str, Any]) -> Path:
    path = output / RECORD
    fsutil.write_atomic(path, json.dumps(record, indent=1) + "\n")
    return path


def load(where: Path) -> dict[str, Any]:
    path = where / RECORD if where.is_dir() else where
    fix = f"pass a run record ({RECORD}) or the output folder of an `sd-env train` run"
    got = state.read_record(path, VERSION, "run record", fix)
    if got is None:
        raise InputError(f"{path}: no such run record", fix)
    return got


@dataclass
class Diff:
    inputs: list[str] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # the keys only: times and places


def _flat(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, dict) and value:
        out: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            out.update(_flat(item, (*prefix, str(key))))
        return out
    return {prefix: value}


def _name(key: tuple[str, ...]) -> str:
    """data.file_sha256[images/0001.png]: a file's name is not split at its dots."""
    for i, part in enumerate(key):
        if part in ("file_sha256", "patches", "packages", "components") and i + 1 < len(key):
            return ".".join(key[: i + 1]) + f"[{key[i + 1]}]" + "".join(f".{p}" for p in key[i + 2:])
    return ".".join(key)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:24] + "..." + text[-12:]


def _grouped(argv: list[Any]) -> list[str]:
    """["--seed", "42", "--random_flip"] -> ["--seed 42", "--random_flip"]: arguments compare as flags."""
    out: list[str] = []
    for item in map(str, argv):
        if out and not item.startswith("--"):
            out[-1] += f" {item}"
        else:
            out.append(item)
    return out


def _change(a: Any, b: Any) -> str:
    if isinstance(a, list) and isinstance(b, list):
        ga, gb = _grouped(a), _grouped(b)
        gone, new = [x for x in ga if x not in gb], [x for x in gb if x not in ga]
        if gone or new:
            return f"{_short(' '.join(gone)) or '(nothing)'} vs {_short(' '.join(new)) or '(nothing)'}"
    return f"{_short(a)} vs {_short(b)}"


def diff(a: dict[str, Any], b: dict[str, Any]) -> Diff:
    fa, fb = _flat(a), _flat(b)
    found = Diff()
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key, "(absent)") == fb.get(key, "(absent)"):
            continue
        name = _name(key)
        dotted = ".".join(key)
        if any(dotted == w or dotted.startswith(w + ".") for w in WHERE):
            found.where.append(name)
        elif any(dotted == w or dotted.startswith(w + ".") for w in OUTCOME):
            found.outcome.append(f"{name}: {_change(fa.get(key, '(absent)'), fb.get(key, '(absent)'))}")
        else:
            found.inputs.append(f"{name}: {_change(fa.get(key, '(absent)'), fb.get(key, '(absent)'))}")
    return found


def render(found: Diff, limit: int = 20) -> list[str]:
    def block(title: str, items: list[str]) -> list[str]:
        shown = [f"  {item}" for item in items[:limit]]
        return [title, *shown, *([f"  ... and {len(items) - limit} more"] if len(items) > limit else [])]

    lines: list[str] = []
    if found.inputs:
        lines += block(f"inputs differ ({len(found.inputs)}):", found.inputs)
    if found.outcome:
        lines += block(f"outcome differs ({len(found.outcome)}):", found.outcome)
    times = [w for w in found.where if w in ("started", "finished", "seconds")]
    others = [w for w in found.where if w not in times]
    but = " and ".join(filter(None, [f"times ({', '.join(times)})" if times else "", ", ".join(others)]))
    if not lines:
        return [f"identical but for {but}: same inputs, same outcome" if but else "identical records"]
    return [*lines, f"(and, as for any two runs: {but})" if but else ""]
