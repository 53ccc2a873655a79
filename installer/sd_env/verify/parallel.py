"""verify's rows for several devices (`--devices N`): an all-reduce across them, then 2 data-parallel
LoRA steps.

Both run one process per device, process k on tpu:k, on the emulated devices with --emulate, else on
the card's: the all-reduce through probes/allreduce.py, the LoRA steps through accelerate's own
launcher (the command `sd-env train --devices` uses, target/multidevice.py) with the patched example
script on the tiny model and data of verify's LoRA step. What the row claims is measured in every
process by the precision watcher: the device of its loss and trained parameters, its losses, and a
digest of its trained weights at the first backward and at exit (equal digests across ranks: the same
weights; a changed digest: they moved).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sd_env.errors import InputError
from sd_env.patching import status
from sd_env.report import FAIL, OK, SKIPPED
from sd_env.system import probe
from sd_env.target import multidevice
from sd_env.verify import precision
from sd_env.verify.context import ONE_THREAD, Check, Context, _problem, hf_env, model_and_data
from sd_env.verify.training import _judge_script, example_args, example_label, example_script

# What a run on emulated devices cannot show, said on the card's rows as what they do show.
CARD_ONLY = "the card's sccl transport and its speed"


def names(world: int) -> tuple[str, str]:
    return f"all-reduce ({world} devices)", f"data-parallel lora ({world} devices)"


def _devices(ctx: Context, devices: list[str]) -> str:
    """The device column: the devices the processes measured, marked when they were emulated."""
    return ", ".join(devices) + (" (emulated)" if ctx.emulated else "")


def _on(ctx: Context) -> str:
    return "(emulated)" if ctx.emulated else "(the card's devices)"


def card_rows(ctx: Context, rows: list[status.ComponentStatus], started: Callable[[str], None],
              done: Callable[[Check], Check]) -> None:
    """`verify --devices N` without --emulate: the two rows on the card's devices tpu:0 to tpu:N-1, the same
    code as on the emulated ones (the real plugin's "sccl" backend, no emulation on the path)."""
    world = ctx.devices
    if not ctx.device.startswith("tpu"):
        for n in names(world):
            done(Check(n, SKIPPED, f"skipped: no SC7 card here (the torch_tpu row); sd-env verify --emulate "
                       f"--devices {world} runs this row on {world} emulated devices"))
        return
    if ctx.device_count is not None and ctx.device_count < world:
        for n in names(world):
            done(Check(n, FAIL, f"--devices {world}: torch_tpu sees {ctx.device_count} device(s) on this card "
                       f"(torch_tpu.tpu.device_count()); bm-smi shows what the card has"))
        return
    run_rows(ctx, rows, started, done, lambda: model_and_data(ctx), os.environ.get("PYTHONPATH"))


def run_rows(ctx: Context, rows: list[status.ComponentStatus], started: Callable[[str], None],
             done: Callable[[Check], Check], inputs: Callable[[], tuple[Path | None, Path | None, str]],
             pythonpath: str | None) -> None:
    """The all-reduce (a few seconds: with --quick too), then the data-parallel steps on `inputs()`
    (verify's tiny model and data); on the card or, with `ctx` around the emulation, emulated."""
    titles = names(ctx.devices)
    started(titles[0])
    done(check_all_reduce(ctx, ctx.devices))
    if ctx.quick:
        done(Check(titles[1], SKIPPED, "skipped: --quick"))
        return
    started(titles[1])
    done(check_data_parallel(ctx, rows, inputs(), ctx.devices, pythonpath))


def check_all_reduce(ctx: Context, world: int) -> Check:
    """One process per device, all-reducing through the "sccl" backend as a multi-device run does."""
    name = names(world)[0]
    asked = [f"tpu:{r}" for r in range(world)]
    # Emulated: as many devices as asked for. On a card the plugin's own count stands.
    env = {**ONE_THREAD, **({"SG_MAX_DEVICE_COUNT": str(world)} if ctx.emulated else {})}
    got = probe.run(ctx.runner, ctx.python, probe.script("allreduce.py"), ["--world", str(world)], timeout=600,
                    env=env)
    if not got.ok or got.data is None:
        return Check(name, FAIL, f"asked for {', '.join(asked)} {_on(ctx)}: {_problem(got)}", got.seconds)
    d = got.data
    return Check(name, OK, f"\"{d['backend']}\" across {', '.join(d['devices'])} {_on(ctx)}: sum {d['sum']:g} "
                 f"(expected {d['expected']:g}); {d['bytes']:,} bytes (SD 1.4's rank-4 LoRA gradients, fp32) in "
                 f"{d['seconds']:.3f} s{' on this CPU' if ctx.emulated else ''}; int64: {d['int64'].split('; ')[0]}",
                 got.seconds, _devices(ctx, d["devices"]))


def check_data_parallel(ctx: Context, rows: list[status.ComponentStatus],
                        inputs: tuple[Path | None, Path | None, str], world: int,
                        pythonpath: str | None = None) -> Check:
    """2 LoRA steps on `world` devices, one process each through accelerate's launcher, fp32, 1 sample per
    device and step; `pythonpath` goes behind the watcher (the emulation's, with --emulate)."""
    name = names(world)[1]
    started = time.monotonic()
    try:
        patch = multidevice.require_multi_patch(ctx.paths, _version(ctx))
    except InputError as exc:
        return Check(name, SKIPPED, f"skipped: {exc.message}; {exc.hint}")
    script, why = example_script(ctx, rows)
    if why is not None:  # sd-env's own step (lora_step.py) is one process: it does not shard the data
        return Check(name, SKIPPED, f"skipped: {why}; the data-parallel steps run the example script through "
                     "accelerate's launcher")
    model, data, how = inputs
    if model is None or data is None:
        return Check(name, FAIL, how)
    out, watch = ctx.paths.cache / "lora-data-parallel", ctx.paths.cache / "lora-data-parallel.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    watch.parent.mkdir(parents=True, exist_ok=True)
    watch.unlink(missing_ok=True)
    env = hf_env(**precision.watch_env(watch, pythonpath), SD_ENV_PRECISION_WEIGHTS="1")
    # The patch moves process k to tpu:k from here (accelerate's LOCAL_RANK).
    env["ACCELERATE_TORCH_DEVICE"] = "tpu:0"
    if ctx.emulated:
        env["SG_MAX_DEVICE_COUNT"] = str(world)
    launcher = multidevice.launcher(ctx.python, world, "no")
    # No validation images: v0.20.0's final validation with none asked for needs no prompt.
    args = [*example_args(model, data, out, "no"), "--num_validation_images", "0"]
    got = probe.run(ctx.runner, ctx.python, script, args,
                    timeout=ctx.timeouts["lora"], env=env, launcher=launcher, label=name)
    got = _judge_script(ctx, got, out, watch)
    seconds = time.monotonic() - started
    asked = f"asked for {', '.join(f'tpu:{r}' for r in range(world))} {_on(ctx)}"
    if not got.ok or got.data is None:
        return Check(name, FAIL, f"{asked}, accelerate launch --multi_gpu: {_problem(got)}", seconds)
    ranks = precision.ranks(watch)
    measured = [ranks[r]["loss_devices"] + ranks[r]["trained_devices"] for r in sorted(ranks)]
    shown = sorted({d for devices in measured for d in devices})
    problem = _problem_of(ranks, world, got.data)
    if problem:
        return Check(name, FAIL, f"{asked}: {problem}", seconds, _devices(ctx, shown) if shown else None)
    d, after = got.data, ranks[0]["weights_after"]
    losses = "; ".join(f"rank {r} " + ", ".join(f"{x:.4f}" for x in ranks[r]["losses"]) for r in sorted(ranks))
    where = f"ran on {', '.join(shown)} {_on(ctx)}"
    card = ("" if ctx.emulated else f"; this is the card's own run: {CARD_ONLY} show here, never under --emulate")
    return Check(name, OK, f"{where}, {example_label(rows)} through accelerate launch --multi_gpu --num_processes "
                 f"{world} ({patch}), fp32, 1 sample per device, global batch {world}, 2 steps: every rank ends "
                 f"with the same LoRA weights ({after['tensors']} trained tensors, sha256 {after['sha256'][:12]}), "
                 f"started equal and moved on every rank (rank 0's file: max |up| {d['up_max']:.1e}); losses "
                 f"{losses} (finite); {how}; measured in each process: rank k's loss and trained parameters on "
                 f"tpu:k{card}", seconds, _devices(ctx, shown))


def _problem_of(ranks: dict[int, dict], world: int, data: dict) -> str | None:
    """What the processes' records show wrong, in the order a reader would look: missing ranks, a wrong
    device, different or unmoved weights, a loss that is not finite."""
    if sorted(ranks) != list(range(world)):
        return (f"the watcher saw ranks {sorted(ranks) or 'none'} train, not 0 to {world - 1} (did accelerate "
                "start one process per device?)")
    for r, rec in sorted(ranks.items()):
        places = sorted(set(rec["loss_devices"] + rec["trained_devices"]))
        if places != [f"tpu:{r}"]:
            return f"rank {r} should train on tpu:{r} alone, but its loss and trained parameters were on " \
                   f"{', '.join(places) or 'nothing measured'}"
    digests = {r: rec.get("weights_after", {}).get("sha256") for r, rec in ranks.items()}
    if len(set(digests.values())) != 1 or None in digests.values():
        return "the ranks end with different LoRA weights (sha256 " + ", ".join(
            f"rank {r} {(h or 'none')[:12]}" for r, h in sorted(digests.items())) + "): the gradients were not averaged"
    befores = {r: rec.get("weights_before", {}).get("sha256") for r, rec in ranks.items()}
    if len(set(befores.values())) != 1 or None in befores.values():
        return "the ranks started from different LoRA weights (prepare() did not broadcast rank 0's)"
    unmoved = [r for r in ranks if befores[r] == digests[r]]
    if unmoved or not data.get("up_max"):
        return f"the LoRA weights did not move (ranks {unmoved or 'all'}; max |up| {data.get('up_max')})"
    bad = {r: rec["losses"] for r, rec in ranks.items() if not all(math.isfinite(x) for x in rec["losses"])}
    if bad or not data.get("finite"):
        return f"a loss is not finite ({bad or data.get('losses')})"
    return None


def _version(ctx: Context) -> str | None:
    try:
        return ctx.man.component("accelerate").version
    except KeyError:
        return None
