"""The shipped stacks: the manifests that come with sd-env, and `-m NAME` for them.

Each shipped manifest pins one of Sophgo's stacks (a Python, a torch, the
torch_tpu wheel made for them, the upstream releases of its tutorial). Users
pick one by name (`-m sc7-sd14-lora-py310`) as well as by path.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sd_env.core import manifest
from sd_env.errors import InputError
from sd_env.report import dump_json, say, table
from sd_env.system import shipped as shipped_files


@dataclass(frozen=True)
class Stack:
    name: str
    python: str
    torch: str  # the pinned torch version, "" when not pinned with ==
    torch_tpu: str  # the torch_tpu version the wheel's file name gives, "" when there is no wheel
    description: str
    path: str


def shipped(where: Path | None = None) -> list[manifest.Manifest]:
    """Every shipped manifest, by name. A shipped manifest that does not load is a bug: it raises."""
    return sorted((manifest.load(p) for p in (where or shipped_files.manifests()).glob("*.toml")),
                  key=lambda m: m.name)


def names(where: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (where or shipped_files.manifests()).glob("*.toml"))


def resolve(arg: Path, where: Path | None = None) -> Path:
    """`-m` as given: an existing file, else the shipped stack of that name."""
    if arg.is_file():
        return arg
    text = str(arg)
    if "/" not in text and not text.endswith(".toml"):
        candidate = (where or shipped_files.manifests()) / f"{text}.toml"
        if candidate.is_file():
            return candidate
        raise InputError(f"no manifest {text!r}: not a file here and not a shipped stack",
                         "pass a path, or one of the shipped stacks: " + ", ".join(names(where)) +
                         " (`sd-env stacks` describes them)")
    return arg  # a missing path: manifest.load says so


def for_this_machine(want: str, where: Path | None = None) -> str:
    """For a missing Python `want`: the shipped stacks made for a Python this machine has (sd-env's
    own, or python3.N on PATH), as a hint's clause; "" when none fits."""
    have = {f"3.{n}" for n in range(8, 16) if shutil.which(f"python3.{n}")}
    have.add(f"{sys.version_info[0]}.{sys.version_info[1]}")
    fits = [(m.python, m.path.stem) for m in shipped(where) if m.python in have and m.python != want]
    return "".join(f"; or take the shipped stack made for the Python {python} this machine has: `-m {name}` "
                   f"(./bootstrap.sh -m {name})" for python, name in fits)


def torch_version(man: manifest.Manifest) -> str:
    from packaging.requirements import InvalidRequirement, Requirement  # here: 40 ms every command would pay

    for text in man.torch.requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.name == "torch":
            pins = [s.version for s in req.specifier if s.operator == "=="]
            return pins[0] if pins else ""
    return ""


def torch_tpu_version(man: manifest.Manifest) -> str:
    if man.torch_tpu is None:
        return ""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        return str(parse_wheel_filename(man.torch_tpu.location.rsplit("/", 1)[-1])[1])
    except InvalidWheelFilename:
        return ""


def describe(man: manifest.Manifest) -> Stack:
    return Stack(man.name, man.python, torch_version(man), torch_tpu_version(man), man.description, str(man.path))


def render(stacks: list[Stack], as_json: bool) -> None:
    if as_json:
        dump_json("stacks", 0, {"stacks": [asdict(s) for s in stacks]})
        return
    table(f"sd-env stacks ({shipped_files.manifests()})", ("name", "python", "torch", "torch_tpu", "for"),
          [[s.name, s.python, s.torch or "-", s.torch_tpu or "-", s.description or "-"] for s in stacks])
    say("use one with -m NAME, e.g. `sd-env install -m " + (stacks[0].name if stacks else "NAME") + "`")
