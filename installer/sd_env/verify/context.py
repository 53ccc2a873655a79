"""What every check shares: the Check row, the Context a verify runs in, its timeouts and
environment variables, the table's columns, and where the inputs of the training checks come from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sd_env.core.manifest import Manifest
from sd_env.errors import InputError
from sd_env.patching import status
from sd_env.system import driver as libsophon
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import envs

_STEP_LOSS = re.compile(r"step_loss=([0-9.eE+-]+|nan|inf)")  # the script's progress bar postfix


# The Hub settings a user gives (a mirror endpoint, offline mode, a cache) reach the training and
# inference probes as they are; offline mode is the default since every input is a local folder.
HF_PASSTHROUGH = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HOME")


# verify's work is tiny (a Linear layer, a 6.5 MB model): one thread is faster than two that
# wait for each other, by 10-25x for the tiny UNet on a busy 2-core machine (9-24 s vs 0.4-1.5 s
# for 30 steps). A real training run (`sd-env train`) keeps torch's default.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# The packages whose versions the bug-report block and a fleet report show.
PACKAGE_FACTS = ("torch", "torchvision", "numpy", "huggingface-hub", "safetensors", "torch-tpu")


TIMEOUTS = {"device": 120.0, "linear": 300.0, "tiny": 600.0, "lora": 1800.0, "infer": 600.0}


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    seconds: float = 0.0
    device: str | None = None  # where real work ran, for checks 6-8


@dataclass
class Context:
    man: Manifest
    paths: Paths
    runner: Runner
    python: Path
    quick: bool = False
    mixed_precision: str = "no"
    timeouts: dict[str, float] = field(default_factory=lambda: dict(TIMEOUTS))
    model: Path | None = None  # a local diffusers model folder instead of the tiny one (--model)
    data: Path | None = None  # a local imagefolder (images + metadata.jsonl) instead of the tiny one (--data)
    device: str = "cpu"  # set by the torch_tpu check
    emulated: bool = False  # --emulate: the device is sd-env's emulated torch_tpu (verify/emulated.py)
    strict: bool = False  # --strict (with --emulate): the era's strict profile
    devices: int = 1  # --devices N: an all-reduce and data-parallel LoRA steps across tpu:0 to tpu:N-1 (parallel.py)
    device_count: int | None = None  # the devices torch_tpu sees (set by the torch_tpu check)
    facts: dict[str, str] = field(default_factory=dict)  # for the bug-report block
    # What hostfacts.py reports as data (a fleet report compares hosts by them): the component
    # rows the checks read, and the driver the torch_tpu check saw.
    rows: list[status.ComponentStatus] = field(default_factory=list)
    driver: libsophon.Driver | None = None
    inventory: envs.Inventory | None = None  # the target as the command found it (else read here)


def _nothing(_: object) -> None:
    pass


def recorder(checks: list[Check], finished: Callable[[Check], None]) -> Callable[[Check], Check]:
    """`done(check)`: keep the check in order and show it at once (`finished`)."""
    def done(check: Check) -> Check:
        checks.append(check)
        finished(check)
        return check
    return done


COLUMNS = ("check", "status", "detail", "s")


def cells(c: Check) -> list[str]:
    """One row of verify's table (report.py renders it)."""
    return [c.name, c.status, c.detail, f"{c.seconds:.1f}"]


# 7 ---------------------------------------------------------------------------
def local_inputs(model: Path | None, data: Path | None) -> tuple[Path | None, Path | None]:
    """--model and --data as absolute folders, refused early when they cannot be what the script reads."""
    if model is not None and not (model / "model_index.json").is_file():
        raise InputError(f"--model {model}: no model_index.json there",
                         "pass a diffusers model folder (e.g. a saved CompVis/stable-diffusion-v1-4 snapshot)")
    if data is not None and not (data / "metadata.jsonl").is_file():
        raise InputError(f"--data {data}: no metadata.jsonl there",
                         'pass an imagefolder: images plus metadata.jsonl lines {"file_name": "1.png", "text": "..."}')
    return (model.resolve() if model else None), (data.resolve() if data else None)


def hf_env(**extra: str) -> dict[str, str]:
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **ONE_THREAD, **extra}
    env.update({k: os.environ[k] for k in HF_PASSTHROUGH if k in os.environ})
    return env


def model_and_data(ctx: Context) -> tuple[Path | None, Path | None, str]:
    """The user's --model/--data folders, the tiny SD model and dataset (built once into the
    cache by the target interpreter) for what was not given."""
    if ctx.model and ctx.data:
        return ctx.model, ctx.data, f"model {ctx.model}, data {ctx.data}"
    cache = ctx.paths.tiny_sd
    got = probe.run(ctx.runner, ctx.python, probe.script("tiny_sd.py"), ["--out", str(cache)],
                    timeout=ctx.timeouts["tiny"], env=hf_env())
    if not got.ok:
        return None, None, f"building the tiny model failed: {_problem(got)}"
    how = "cached" if got.data and got.data.get("cached") else f"built in {got.seconds:.1f} s"
    said = [f"model {ctx.model}" if ctx.model else f"tiny model {how}",
            f"data {ctx.data}" if ctx.data else "tiny dataset"]
    return ctx.model or cache / "model", ctx.data or cache / "data", ", ".join(said)


def _where(ctx: Context) -> str:
    if ctx.emulated:
        return "ran on tpu (emulated)"
    return f"ran on {ctx.device}" + (" (no SC7 card)" if ctx.device == "cpu" else "")


def _asked(ctx: Context) -> str:
    """What a row says of work that was not measured on the device it claims: only what was asked."""
    return f"asked for {ctx.device}" + (" (emulated)" if ctx.emulated else "")


def _problem(got: probe.ProbeResult) -> str:
    if got.problem:
        return got.problem + (f"\n{got.stderr_tail}" if got.stderr_tail else "")
    return str((got.data or {}).get("error", "the probe reported failure"))
