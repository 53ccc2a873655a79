"""What `sd-env run`, `shell` and `train` give a command: the tutorial's training shell.

The tutorial trains in a shell where the environment is activated, `ulimit -n
65535` was run and `ACCELERATE_TORCH_DEVICE=tpu:0` is exported. This module
works out those settings for one target and says in plain words what it set,
so a user never has to guess why accelerate picked the CPU.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sd_env.core.names import canonical
from sd_env.target import torchtpu
from sd_env.target.envs import Inventory

NOFILE = 65535  # the tutorial's `ulimit -n 65535`
DEVICE_VAR = "ACCELERATE_TORCH_DEVICE"  # read by accelerate >= 0.16.0 (state.py)
# Hugging Face settings users rely on behind a firewall or offline; kept as they are, and named.
HF_VARS = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HOME", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class TrainEnv:
    env: dict[str, str]  # the whole environment of the command
    nofile: int | None  # the soft open-files limit to set for it; None leaves it as it is
    notes: list[str] = field(default_factory=list)  # what was set and why, one line each
    device: str = "cpu"


def sophgo_installed(inv: Inventory) -> bool:
    """Sophgo's torch_tpu distribution is in the target (Google's same-named one does not count)."""
    entries = [e for n, es in inv.dists.items() if canonical(n) == torchtpu.NAME for e in es]
    return any(not torchtpu.is_google(e) for e in entries)


def choose_device(wanted: str, inv: Inventory, override: str | None, inherited: str | None,
                  why: str = "--device") -> tuple[str, str]:
    """The device for ACCELERATE_TORCH_DEVICE and why.

    --device wins, then a value the user already exported, then the manifest's
    device when Sophgo's torch_tpu is installed. Without it "tpu:0" makes
    accelerate fail ("Expected one of cpu, cuda, ... device type"), so the CPU.
    """
    if override:
        return override, why
    if inherited:
        return inherited, f"${DEVICE_VAR} was already set"
    if not wanted.startswith("tpu") or sophgo_installed(inv):
        return wanted, "the manifest's device"
    return "cpu", (f"torch_tpu is not installed in the target, so the manifest's {wanted} cannot work; "
                   f"--device {wanted} forces it")


# How a user gets past a hard limit below the tutorial's (an ordinary user cannot raise it).
RAISE_HARD = (f"raise the hard limit: a `* hard nofile {NOFILE}` line in /etc/security/limits.conf (then log in "
              f"again), LimitNOFILE={NOFILE} for a systemd service, or `ulimit -Hn {NOFILE}` in a root shell")


def nofile_limit(soft: int, hard: int) -> tuple[int | None, str]:
    """The soft limit to set (None: leave it) and a note; a hard limit below the need is a warning."""
    inf = resource.RLIM_INFINITY
    if soft == inf or soft >= NOFILE:
        return None, f"ulimit -n {'unlimited' if soft == inf else soft} (>= {NOFILE}, left as it is)"
    if hard == inf or hard >= NOFILE:
        return NOFILE, f"ulimit -n {NOFILE} (raised from {soft})"
    raised = f"raised from {soft} as far as it allows" if soft < hard else "already at the hard limit"
    return (hard if soft < hard else None), (
        f"WARNING: ulimit -n {hard}, not the {NOFILE} the tutorial asks for ({raised}): the hard limit is "
        f"{hard}. To {RAISE_HARD}")


def nofile_advice(hard: int) -> str:
    """What to run for the tutorial's open-files limit, given the hard limit (no higher)."""
    done = "`sd-env shell`, `run` and `train` do it for their command"
    if hard == resource.RLIM_INFINITY or hard >= NOFILE:
        return (f"run `ulimit -n {NOFILE}` in the training shell ({done}; permanently: a `nofile` line in "
                "/etc/security/limits.conf)")
    return (f"the hard limit is {hard}, so `ulimit -n {hard}` is as far as the training shell can go ({done}); "
            f"to reach {NOFILE}, {RAISE_HARD}")


def build(inv: Inventory, wanted_device: str, override: str | None = None,
          base: Mapping[str, str] | None = None, why: str = "--device") -> TrainEnv:
    """The environment of a command run "inside" the target: its bin first on PATH, the training variables;
    `why` says where `override` came from (a command's own default is not a --device the user gave)."""
    base = dict(os.environ if base is None else base)
    prefix = Path(inv.prefix)
    env = {k: v for k, v in base.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    bin_dir = Path(inv.executable).parent
    env["PATH"] = os.pathsep.join([str(bin_dir), *[p for p in base.get("PATH", "").split(os.pathsep) if p]])
    conda = (prefix / "conda-meta").is_dir()
    env["CONDA_PREFIX" if conda else "VIRTUAL_ENV"] = str(prefix)
    device, chosen = choose_device(wanted_device, inv, override, base.get(DEVICE_VAR), why)
    env[DEVICE_VAR] = device
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit, nofile_note = nofile_limit(soft, hard)
    notes = [f"environment: {prefix} (Python {'.'.join(map(str, inv.python))})",
             f"{DEVICE_VAR}={device} ({chosen})", nofile_note]
    passed = [f"{k}={base[k]}" for k in HF_VARS if base.get(k)]
    if passed:
        notes.append("passed through: " + ", ".join(passed))
    return TrainEnv(env, limit, notes, device)


def apply_nofile(limit: int | None) -> None:
    """Set the soft open-files limit in this process (before an exec, or in a child)."""
    if limit is None:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
