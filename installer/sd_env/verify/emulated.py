"""`sd-env verify --emulate`: the real-work checks on sd-env's emulated torch_tpu.

The same environment checks as `verify`, then the Linear smoke test, the LoRA
step in fp16 and in fp32 (with the precision it really ran in) and the
tutorial's inference, on "tpu (emulated)": the emulation (emulation.py) is
put first on PYTHONPATH for those probe runs only, so the target environment
is never changed. No row claims a card.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from sd_env.errors import SdEnvError
from sd_env.patching import status
from sd_env.report import FAIL, OK, SKIPPED, progress
from sd_env.system import probe
from sd_env.system.runner import Completed, Runner
from sd_env.target import envs
from sd_env.verify import emulation, parallel, placement, precision
from sd_env.verify.context import (
    Check,
    Context,
    _asked,
    _nothing,
    _problem,
    hf_env,
    model_and_data,
    recorder,
)
from sd_env.verify.device import check_linear, check_torch_tpu
from sd_env.verify.environment import check_ulimit, environment_checks
from sd_env.verify.training import check_lora_step

DEVICE = "tpu:0"
PRECISIONS = (("fp16", "fp16"), ("no", "fp32"))  # --mixed_precision value, row label


@dataclass
class EnvRunner(Runner):
    """The verify run's runner, with extra environment for every command it runs."""

    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def around(cls, runner: Runner, extra: Mapping[str, str]) -> EnvRunner:
        return cls(log_path=runner.log_path, echo=runner.echo, calls=runner.calls, extra=dict(extra))

    def run(self, argv, *, env=None, **kwargs) -> Completed:  # type: ignore[no-untyped-def, override]
        return super().run(argv, env={**self.extra, **(env or {})}, **kwargs)


def run(ctx: Context, started: Callable[[str], None] = _nothing,
        finished: Callable[[Check], None] = _nothing) -> list[Check]:
    """verify's checks with the work rows on the emulated tpu; `started`/`finished` as in verify.run."""
    ctx.emulated = True
    checks: list[Check] = []
    done = recorder(checks, finished)
    started("interpreter")
    inv = ctx.inventory or envs.inventory(ctx.runner, ctx.python)
    rows = status.collect(ctx.man, ctx.paths, ctx.runner, ctx.python, inv)
    environment_checks(ctx, inv, rows, started, done)
    started("torch_tpu")
    real = check_torch_tpu(ctx, inv)  # what is installed, judged as always
    started("emulator")
    emu, built = build(ctx)
    done(torch_tpu_row(ctx, real, emu))
    done(built)
    started("ulimit -n")
    done(check_ulimit())
    names = ["linear smoke", *(f"lora step ({label})" for _, label in PRECISIONS), "inference"]
    if emu is None:
        for n in [*names, *(parallel.names(ctx.devices) if ctx.devices > 1 else ())]:
            done(Check(n, SKIPPED, "skipped: the emulated torch_tpu is not available (see the emulator row)"))
        return checks
    ctx.device = DEVICE
    setup = emulation.settings(ctx.man, emu, ctx.strict)
    emu_env = emulation.environment(emu, DEVICE, setup)
    on_emu = dataclasses.replace(ctx, runner=EnvRunner.around(ctx.runner, emu_env))
    started("linear smoke")
    done(_label(check_linear(on_emu)))
    tiny = functools.cache(lambda: model_and_data(on_emu))  # the tiny model, once for every training row
    if ctx.devices > 1:
        parallel.run_rows(on_emu, rows, started, done, tiny, emu_env["PYTHONPATH"])
    if ctx.quick:
        for n in names[1:]:
            done(Check(n, SKIPPED, "skipped: --quick"))
        return checks
    steps = []
    inputs = tiny()
    for mixed, label in PRECISIONS:
        started(f"lora step ({label})")
        steps.append(done(lora_step(on_emu, rows, inputs, mixed, label)))
    started("inference")
    done(check_inference(on_emu, steps[-1]))
    return checks


def build(ctx: Context) -> tuple[emulation.Emulator | None, Check]:
    """The emulation for the target's torch, from the home's cache or compiled now, and its settings."""
    emu, row = _build(ctx)
    if emu is None:
        return emu, row
    try:
        said = emulation.describe(emulation.settings(ctx.man, emu, ctx.strict))
    except SdEnvError as exc:  # a profile the manifest names that does not exist
        return None, Check("emulator", FAIL, f"{exc.message} -> {exc.hint}", row.seconds)
    ctx.facts["emulator settings"] = "; ".join(said) or "lenient (no strict profile), no capacity limit"
    return emu, dataclasses.replace(row, detail="; ".join([row.detail, *said]))


def _build(ctx: Context) -> tuple[emulation.Emulator | None, Check]:
    progress("emulated torch_tpu: loading it from the cache, or compiling it (the first build takes about 30 s)")
    started = time.monotonic()
    try:
        emu = emulation.build(ctx.runner, ctx.python, ctx.paths)
    except SdEnvError as exc:  # EmulatorUnavailable (no compiler, headers or torch 2.1), or a failed build
        hint = f" -> {exc.hint}" if exc.hint else ""
        return None, Check("emulator", FAIL, f"cannot build the emulated torch_tpu: {exc.message}{hint}",
                           time.monotonic() - started)
    how = "cached" if emu.cached else f"built in {emu.seconds:.1f} s"
    ctx.facts["emulator"] = f"{emu.pythonpath} ({how}, key {emu.key})"
    return emu, Check("emulator", OK, f"sd-env's emulated torch_tpu {emu.era} (CPU-backed), {how}: {emu.pythonpath}; "
                      "on PYTHONPATH for the probe runs below only, never installed", emu.seconds)


def torch_tpu_row(ctx: Context, real: Check, emu: emulation.Emulator | None) -> Check:
    """The real plugin's check, saying that the rows below ran on the emulation, not on a card."""
    if emu is None:
        return real
    note = ("the rows below ran on sd-env's emulated torch_tpu (torch_tpu.EMULATED), not on a card: only an SC7 "
            "card can show the real device")
    if real.status == SKIPPED:
        why = ctx.facts.get("torch_tpu", "torch_tpu not checked")
        return Check(real.name, SKIPPED, f"skipped: no SC7 card here ({why}; {ctx.facts.get('driver', '')}); "
                     f"{note}", real.seconds)
    return dataclasses.replace(real, detail=f"{real.detail}; --emulate: {note}")


def lora_step(ctx: Context, rows: list[status.ComponentStatus], inputs: tuple[Path | None, Path | None, str],
              mixed: str, label: str) -> Check:
    """verify's LoRA step at one precision, with the precision watcher on the training run's path
    (only there: it imports torch at start-up, which the light probes around it avoid)."""
    out = ctx.paths.cache / f"precision-{label}.jsonl"
    stats = ctx.paths.cache / f"emulator-stats-{label}.jsonl"
    for old in (out, stats):
        old.unlink(missing_ok=True)
    assert isinstance(ctx.runner, EnvRunner)
    # check_lora_step puts the watcher first on the run's PYTHONPATH, ahead of the emulation's.
    step = check_lora_step(dataclasses.replace(ctx, mixed_precision=mixed), rows, inputs,
                                  env_extra={"PYTHONPATH": ctx.runner.extra["PYTHONPATH"],
                                             "SD_ENV_EMULATOR_STATS": str(stats)}, watch=out)
    step = _label(dataclasses.replace(step, name=f"lora step ({label})"))
    got = precision.read(out)
    said = "; ".join(filter(None, [precision.summary(mixed, got), peak_memory(stats)]))
    ctx.facts[f"precision {label}"] = said
    if step.status != OK:
        return dataclasses.replace(step, detail=f"{step.detail}; {said}")
    if got.measured and got.devices != {"tpu"}:
        return dataclasses.replace(step, status=FAIL, detail=f"{step.detail}; but the UNet's matmuls ran on "
                                   f"{', '.join(sorted(got.devices))}, not only on tpu: {said}")
    return dataclasses.replace(step, detail=f"{step.detail}; {said}")


def peak_memory(stats: Path) -> str:
    """The training run's peak "tpu" memory, from the emulator's counters (written at its exit)."""
    try:
        last = json.loads(stats.read_text(encoding="utf-8").splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return ""
    dev = last["devices"][0]
    cap = f" of {dev['capacity_bytes'] / 2**20:.0f} MiB" if dev.get("capacity_bytes") else ""
    return (f"peak tpu memory {dev['peak_bytes'] / 2**20:.1f} MiB{cap} ({dev['peak_requested_bytes'] / 2**20:.1f} "
            f"MiB requested, {dev['allocations']} allocations)")


def check_inference(ctx: Context, step: Check) -> Check:
    """Inference as the stack's own instructions do it: the tutorial's sections 2.1 and 2.2 for the
    diffusers 0.20 stack, the final validation of Sophgo's SD 1.5 demo for diffusers >= 0.26 (peft LoRA)."""
    if step.status != OK:
        return Check("inference", SKIPPED, f"skipped: the LoRA step did not pass ({step.status})")
    try:
        version = Version(ctx.man.component("diffusers").version)
    except (KeyError, InvalidVersion):
        version = Version("0.20.0")
    return check_demo_inference(ctx) if version >= Version("0.26") else check_tutorial_inference(ctx)


def check_demo_inference(ctx: Context) -> Check:
    got, placed, where, failed = _infer(ctx, "demo_infer.py", "as Sophgo's SD 1.5 demo validates",
                                        ("same_image_twice", "finite", "lora_parameters"))
    if failed is not None:
        return failed
    d = got.data or {}
    return Check("inference", OK, f"{where}: {d['dtype']} pipeline on {d['device']}, load_lora_weights "
                 f"({d['lora_parameters']} LoRA parameters), torch.Generator(device).manual_seed under "
                 f"torch.autocast -> image {d['shape']}, the same image twice (LoRA vs base max diff "
                 f"{d['lora_vs_base_max_diff']:.1e}); measured: {placed.said()}", got.seconds,
                 _emulated(placed.device))


def check_tutorial_inference(ctx: Context) -> Check:
    got, placed, where, failed = _infer(ctx, "tutorial_infer.py", "the tutorial's 2.1 and 2.2",
                                        ("same_image_twice", "same_lora_image_twice", "finite", "lora_processors"))
    if failed is not None:
        return failed
    d = got.data or {}
    return Check("inference", OK, f"{where}: {d['dtype']} pipeline on {d['device']}, seeded by torch.manual_seed "
                 f"-> image {d['shape']}, the same image twice with and without the LoRA ({d['lora_processors']} "
                 f"LoRA processors, LoRA vs base max diff {d['lora_vs_base_max_diff']:.1e}); measured: "
                 f"{placed.said()}", got.seconds, _emulated(placed.device))


def _infer(ctx: Context, script: str, how: str, facts: tuple[str, ...]) -> tuple[probe.ProbeResult, placement.Placement,
                                                                                 str, Check | None]:
    """An inference probe's run, where it measured it ran ("ran on tpu (emulated), HOW", or the device
    asked for when it measured another), and its failed row (the probe's facts named) or None."""
    got = probe.run(ctx.runner, ctx.python, probe.script(script),
                    ["--model", str(ctx.model or ctx.paths.tiny_sd / "model"), "--lora", str(ctx.paths.lora_out),
                     "--device", ctx.device, "--steps", "2"], timeout=ctx.timeouts["infer"], env=hf_env())
    placed = placement.measure(ctx.device, got.data, placement.INFERENCE, "the inference probe reported none")
    where = f"{_asked(ctx)}, {how}" if placed.problem or placed.device is None else f"ran on tpu (emulated), {how}"
    if got.data is None or not got.ok:
        d = got.data or {}
        said = ", ".join(f"{k}={d[k]}" for k in facts if k in d)
        detail = f"{where}: {_problem(got)}" + (f" ({said})" if said else "")
        return got, placed, where, Check("inference", FAIL, detail, got.seconds, _emulated(placed.device))
    if placed.problem:
        return got, placed, where, Check("inference", FAIL, f"{where}: {placed.problem}", got.seconds,
                                         _emulated(placed.device))
    return got, placed, where, None


def _emulated(device: str | None) -> str | None:
    return f"{device} (emulated)" if device and device.startswith("tpu") else device


def _label(check: Check) -> Check:
    return dataclasses.replace(check, device=_emulated(check.device))

