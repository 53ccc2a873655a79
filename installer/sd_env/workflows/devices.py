"""`sd-env train --devices 0,1`: one training process per device, through accelerate's own launcher.

Whether the home's accelerate can (its multi-device patch) and the launcher command are in
target/multidevice.py, shared with `sd-env verify --devices`. The device count is the target's own
(`torch_tpu.tpu.device_count()`, on the card or emulated): nothing here guesses it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from sd_env.core.manifest import Manifest
from sd_env.errors import InputError
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import envs, multidevice, trainenv
from sd_env.verify import emulation

# bm-smi shows what runs on each device of a card; the plugin has no call for it, the emulator nothing to show.
BUSY = ("whether a device is busy (another process on it) is not checked: only the card's bm-smi shows it "
        "(run `bm-smi` before a long run)")


@dataclass(frozen=True)
class Plan:
    devices: list[int]  # the tpu indices, one process each, in launch order (process k on tpu:k)

    @property
    def processes(self) -> int:
        return len(self.devices)

    @property
    def names(self) -> list[str]:
        return [f"tpu:{d}" for d in self.devices]


def parse(spec: str) -> list[int] | None:
    """"0,1" -> [0, 1]; "all" -> None (every device the target has). Duplicates and non-indices are errors."""
    if spec.strip().lower() == "all":
        return None
    items = [s.strip().removeprefix("tpu:") for s in spec.split(",")]
    if not items or not all(s.isdigit() for s in items):
        raise InputError(f"--devices {spec}: not a list of device indices",
                         "give the devices as bm-smi numbers them, e.g. --devices 0,1, or --devices all")
    devices = [int(s) for s in items]
    twice = sorted({d for d in devices if devices.count(d) > 1})
    if twice:
        raise InputError(f"--devices {spec}: {', '.join(f'tpu:{d}' for d in twice)} listed twice",
                         "name each device once: one training process per device")
    return devices


def plan(wanted: list[int] | None, count: int, where: str) -> Plan:
    """The devices to train on, checked against the `count` devices the target's torch_tpu sees."""
    have = ", ".join(f"tpu:{i}" for i in range(count)) or "none"
    if count < 1:
        raise InputError(f"--devices: torch_tpu sees no device ({where})",
                         "check the card with bm-smi (and /dev/bm-sophon* permissions), or train with --emulate")
    devices = list(range(count)) if wanted is None else wanted
    missing = [d for d in devices if d >= count]
    if missing:
        raise InputError(f"--devices: {', '.join(f'tpu:{d}' for d in missing)} does not exist: torch_tpu sees "
                         f"{count} device(s) ({have}; {where})", f"use devices 0 to {count - 1}, or --devices all")
    if len(devices) > 1 and sorted(devices) != list(range(len(devices))):
        # The multi-device patch puts process k on tpu:k (accelerate's LOCAL_RANK); the plugin has no
        # CUDA_VISIBLE_DEVICES to renumber the devices, so a set that skips tpu:0 cannot be honoured.
        raise InputError(f"--devices {','.join(map(str, devices))}: several devices must be tpu:0 to tpu:N-1 "
                         "(process k trains on tpu:k)", f"use --devices {','.join(map(str, range(len(devices))))}, "
                         "or one device alone with --device tpu:N")
    return Plan(sorted(devices))


def batch_note(chosen: Plan, per_device: int, accumulation: int, learning_rate: str, scale_lr: bool) -> str:
    """What a user must know before comparing with a one-device run: the global batch and the learning rate."""
    total = chosen.processes * per_device * accumulation
    factor = f"{chosen.processes} devices x {per_device} per device x {accumulation} gradient accumulation"
    if scale_lr:
        lr = (f"learning rate {learning_rate} scaled by the script (--scale_lr) to {float(learning_rate) * total:g} "
              f"(x {total})")
    else:
        lr = (f"learning rate {learning_rate} as given, not scaled (pass -- --scale_lr to have the script multiply "
              f"it by {total})")
    return f"{chosen.processes} processes on {', '.join(chosen.names)}: global batch {total} ({factor}); {lr}"


def target(man: Manifest, paths: Paths, runner: Runner, python: Path, inv: envs.Inventory, device: str | None,
           spec: str | None, emulate: bool) -> tuple[trainenv.TrainEnv, Plan | None]:
    """The training environment (the card's, or the emulated tpu's with --emulate) and, with --devices, the
    devices checked: listed once, accelerate able to use several, each one there. Cheap checks first."""
    if spec and device:
        raise InputError("--device and --devices both given", "--device tpu:N for one device, --devices 0,1 for "
                         "several")
    wanted = parse(spec) if spec else None
    if spec and (wanted is None or len(wanted) > 1):
        multidevice.require_multi_patch(paths, _version(man, "accelerate"))
    why = "--device"
    if device is None and (spec or emulate):
        device, why = f"tpu:{(wanted or [0])[0]}", "--devices" if spec else "train --emulate's default"
    env = trainenv.build(inv, man.device, device, why=why)
    if emulate:
        emu = emulation.build(runner, python, paths)
        setup = emulation.settings(man, emu)
        env.env.update(emulation.environment(emu, env.device, setup))
        # As many emulated devices as the user exported (the real plugin reads the same variable), else as many
        # as --devices names: a device past them does not exist, as on a card with fewer.
        count = os.environ.get("SG_MAX_DEVICE_COUNT") or str(max(wanted or [0]) + 1)
        env.env["SG_MAX_DEVICE_COUNT"] = count
        env.notes.append(emulation.note(emu, env.device))
        if count != "1":
            env.notes.append(emulation.describe_devices(int(count)))
        env.notes.extend(emulation.describe(setup))
    if spec is None:
        return env, None
    got = probe.run(runner, python, probe.script("device.py"), [], timeout=300, env=env.env)
    facts = got.data or {}
    if not facts.get("importable"):
        raise InputError(f"--devices needs Sophgo's torch_tpu in the target: {facts.get('error') or got.problem}",
                         "install its wheel (sd-env install --torch-tpu-wheel PATH), or add --emulate to train on "
                         "the emulated tpu")
    where = (f"emulated, SG_MAX_DEVICE_COUNT={env.env['SG_MAX_DEVICE_COUNT']}" if emulate
             else "torch_tpu.tpu.device_count()")
    chosen = plan(wanted, int(facts.get("count") or 0), where)
    if chosen.processes == 1:  # one device: one process, as --device tpu:N
        env.env[trainenv.DEVICE_VAR] = chosen.names[0]
        env = dataclasses.replace(env, device=chosen.names[0])
    return env, chosen


def _version(man: Manifest, name: str) -> str | None:
    try:
        return man.component(name).version
    except KeyError:
        return None
