"""`sd-env verify`: will this environment train? Every check, in order, as a result.

Checks 1-5 read the environment; 6-8 run real work (a Linear layer, a LoRA
training step, inference with the LoRA) on the SC7 card when there is one,
else on the CPU, and every row says which device it really used.
"""

from __future__ import annotations

import math
import os
import platform
import re
import resource
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sd_env import (
    __version__,
    closure,
    envs,
    extras,
    fsutil,
    lockfile,
    placement,
    precision,
    probe,
    requirements_check,
    status,
    target,
    torchtpu,
    trainenv,
)
from sd_env import driver as libsophon
from sd_env.errors import InputError
from sd_env.manifest import Manifest
from sd_env.paths import Paths
from sd_env.readiness import EXAMPLE
from sd_env.report import FAIL, NA, OK, SKIPPED, WARN
from sd_env.runner import Runner

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
    emulated: bool = False  # --emulate: the device is sd-env's emulated torch_tpu (verify_emulated.py)
    strict: bool = False  # --strict (with --emulate): the era's strict profile
    devices: int = 1  # --devices N (with --emulate): an all-reduce across N emulated devices
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


def environment_checks(ctx: Context, inv: envs.Inventory, rows: list[status.ComponentStatus],
                       started: Callable[[str], None], done: Callable[[Check], Check]) -> None:
    """Checks 1-3, which read the environment (the interpreter, the pins, the sources and patches)."""
    ctx.rows = rows
    done(check_interpreter(ctx, inv))
    started("pins")
    done(check_pins(ctx, inv))
    started("sources+patches")
    done(check_sources(ctx, rows))


def run(ctx: Context, started: Callable[[str], None] = _nothing,
        finished: Callable[[Check], None] = _nothing) -> list[Check]:
    """Every check in order; `started(name)` before each, `finished(check)` as soon as it is known."""
    checks: list[Check] = []
    done = recorder(checks, finished)
    started("interpreter")
    inv = ctx.inventory or envs.inventory(ctx.runner, ctx.python)
    google = torchtpu.installed_google(inv) is not None
    # torch is imported once for the device and Linear rows, while the git and metadata
    # checks run here: --quick costs about one `import torch`. A full verify without
    # Sophgo's torch_tpu can only run on the CPU, so the LoRA step starts at once and the
    # inference probe, which imports torch anyway, also gives the device and Linear rows.
    shared = not ctx.quick and not google and not trainenv.sophgo_installed(inv)
    tail: tuple[Check, Check] | None = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        torch_probe = pool.submit(_torch_checks, ctx) if not google and not shared else None
        rows = status.collect(ctx.man, ctx.paths, ctx.runner, ctx.python, inv)
        environment_checks(ctx, inv, rows, started, done)
        if shared:
            started("lora step (the torch_tpu, Linear and inference rows come with it)")
            step, inference, torch_got = _lora_and_inference(ctx, rows, True)
            tail = (step, inference)
            if torch_got is None:  # the inference probe did not run or died: ask on its own
                torch_got = _torch_checks(ctx)
        else:
            started("linear smoke")  # the torch_tpu row comes from the same probe
            torch_got = torch_probe.result() if torch_probe is not None else None
    device_got, linear_got = _split(torch_got) if torch_got is not None else (None, None)
    done(check_torch_tpu(ctx, inv, device_got))
    done(check_ulimit())
    done(check_linear(ctx, linear_got))
    if ctx.quick:
        done(Check("lora step", SKIPPED, "skipped: --quick"))
        done(Check("inference", SKIPPED, "skipped: --quick"))
        return checks
    if tail is None:
        started("lora step")
        step, inference, _ = _lora_and_inference(ctx, rows, False)
        tail = (step, inference)
    done(tail[0])
    done(tail[1])
    return checks


def _torch_checks(ctx: Context) -> probe.ProbeResult:
    return probe.run(ctx.runner, ctx.python, probe.script("torch_checks.py"),
                     ["--want", ctx.man.device, "--device-timeout", str(ctx.timeouts["device"])],
                     timeout=ctx.timeouts["device"] + ctx.timeouts["linear"], env=ONE_THREAD)


def _lora_and_inference(ctx: Context, rows: list[status.ComponentStatus],
                        torch_checks: bool) -> tuple[Check, Check, probe.ProbeResult | None]:
    """The LoRA step, with the inference probe importing and rendering its base image meanwhile;
    it loads the LoRA once the step has passed (the go file says so). With `torch_checks`, the
    inference probe's device facts and Linear result too (None when it gave none)."""
    go = ctx.paths.cache / "lora-out.go"
    go.unlink(missing_ok=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        infer = None
        # The tiny model is built (or found) once, for both probes.
        inputs = None if ctx.mixed_precision == "fp16" and ctx.device == "cpu" else model_and_data(ctx)
        if inputs is not None and inputs[0] is not None:
            infer = pool.submit(_run_inference, ctx, go, torch_checks)
        verdict = "stop"
        try:
            step = check_lora_step(ctx, rows, inputs)
            verdict = "go" if step.status == OK else "stop"
        finally:
            fsutil.write_atomic(go, verdict)  # whole, never half-written, when the probe reads it
        got = infer.result() if infer is not None else None
    go.unlink(missing_ok=True)
    shared = (got.data or {}).get("torch_checks") if got is not None else None
    torch_got = None
    if shared:
        seconds = float(shared["device"].get("seconds", 0.0)) + float(shared["linear"].get("seconds", 0.0))
        torch_got = probe.ProbeResult({"ok": True, **shared}, None, seconds)
    return step, check_inference(ctx, step, got), torch_got


def _split(got: probe.ProbeResult) -> tuple[probe.ProbeResult, probe.ProbeResult | None]:
    """torch_checks.py's result as the device probe's and the linear probe's; no linear
    result when the process died (a torch_tpu crash): then linear runs on its own."""
    if got.data is None:
        return got, None
    if "device_timeout" in got.data:
        seconds = float(got.data["device_timeout"])
        return probe.ProbeResult(None, f"timed out after {seconds:.0f} s (killed)", seconds, got.stderr_tail,
                                 got.stderr), None
    device = got.data["device"]
    linear = got.data["linear"]
    linear_seconds = float(linear.get("seconds", 0.0))
    return (probe.ProbeResult(device, None, max(0.0, got.seconds - linear_seconds), got.stderr_tail, got.stderr),
            probe.ProbeResult(linear, None, linear_seconds, got.stderr_tail, got.stderr))


COLUMNS = ("check", "status", "detail", "s")


def cells(c: Check) -> list[str]:
    """One row of verify's table (report.py renders it)."""
    return [c.name, c.status, c.detail, f"{c.seconds:.1f}"]


# 1 ---------------------------------------------------------------------------
def check_interpreter(ctx: Context, inv: envs.Inventory) -> Check:
    have = ".".join(map(str, inv.python))
    ctx.facts["Python (target)"] = f"{have} ({ctx.python})"
    if ".".join(map(str, inv.python[:2])) == ctx.man.python:
        return Check("interpreter", OK, f"Python {have} at {ctx.python}")
    return Check("interpreter", FAIL, f"Python {have} at {ctx.python}, the manifest wants {ctx.man.python}: "
                 "recreate the environment (sd-env install --python /path/to/python3.9)")


# 2 ---------------------------------------------------------------------------
def check_pins(ctx: Context, inv: envs.Inventory) -> Check:
    started = time.monotonic()
    for name, inst in target.installed(inv, list(PACKAGE_FACTS)).items():
        ctx.facts[name] = ", ".join(inst.versions) or "not installed"
    problems = []
    count = 0
    if ctx.man.lock is not None:
        lock = lockfile.read(ctx.man.lock.files[lockfile.flavour_order(ctx.man)[0]])
        count = len(lock.pins)
        for name, (want, have) in sorted(closure.missing(lock, inv).items()):
            problems.append(f"{name}: locked {want}, installed {have or 'nothing'}")
    for name, entries in sorted(inv.dists.items()):
        if len(entries) > 1:
            where = ", ".join(e["path"] for e in entries)
            problems.append(f"{name}: {len(entries)} distributions shadow each other ({where})")
    broken = requirements_check.broken(inv)  # pip check's judgement, without a pip process
    if broken:
        problems.append("pip check: " + "; ".join(broken[:4]))
    seconds = time.monotonic() - started
    unlocked = extras.find(ctx.man, inv)
    extra_text = (f"{len(unlocked)} packages not in the lock: {', '.join(unlocked)} "
                  "(`sd-env install --sync` removes them)") if unlocked else ""
    if problems:
        return Check("pins", FAIL, "; ".join(problems + ([extra_text] if extra_text else []))
                     + " -> run `sd-env install` to restore the lock", seconds)
    if unlocked:
        return Check("pins", WARN, f"{count} locked packages at their versions, pip check clean; {extra_text}",
                     seconds)
    return Check("pins", OK, f"{count} locked packages at their versions, no shadowing copies, pip check clean",
                 seconds)


# 3 ---------------------------------------------------------------------------
def check_sources(ctx: Context, rows: list[status.ComponentStatus]) -> Check:
    problems, notes, good = [], [], []
    unfetched = edited = False
    for row in rows:
        if row.head is None:
            problems.append(f"{row.name}: not fetched")
            unfetched = True
            continue
        if row.pinned and row.head != row.pinned:
            problems.append(f"{row.name}: checkout at {row.head[:12]}, pinned {row.pinned[:12]}")
        # The bug-report block says what Python imports; the checkout only when that is it.
        where = "" if row.install_ok else " in the managed checkout, which is not what is installed"
        for name, state in row.patches.items():
            ctx.facts[f"patch {name}"] = state + where
            if state == status.NOT_APPLICABLE:
                notes.append(f"{name} not applicable ({row.name} from its sdist)")
            elif state == status.APPLIED_CHANGED:
                notes.append(f"{name} changed since it was applied, the checkout is what it produces "
                             "(`sd-env install` records it)")
            elif state != status.APPLIED:
                problems.append(f"{row.name}: {name} is {state}")
        if row.edited:
            problems.append(f"{row.name}: local edits in {', '.join(row.edited)}")
            edited = True
        if row.inplace:  # a known patcher, not an unknown edit: say whose, and that sd-env's patches replace it
            problems.append(f"{row.name}: {row.inplace} (sd-env's own patches do this; `sd-env install` "
                            "or `sd-env repatch` puts the managed checkout back)")
        if not row.install_ok:
            problems.append(f"{row.name}: {row.install}")
        checkout = f"{row.tag} {row.source} {row.head[:12]}"
        ctx.facts[row.name] = (f"{checkout} ({row.install})" if row.install_ok else
                               f"{row.install}; the managed checkout {checkout} is not what is installed")
        good.append(f"{row.name} {row.tag}")
    if problems:
        # One story per failure, the same in status and the README: a clobbered component is
        # repatch's job; local edits are the user's to keep or drop first; nothing fetched is install's.
        if edited:
            fix = "keep or discard the local edits first (`sd-env status` names them), then run `sd-env repatch`"
        elif unfetched:
            fix = "run `sd-env install`"
        else:
            fix = "run `sd-env repatch` to restore the pinned, patched, editable state"
        return Check("sources+patches", FAIL, "; ".join(problems) + " -> " + fix)
    detail = f"{', '.join(good)}: at the pinned commits, patches applied, editable installs -> checkouts"
    return Check("sources+patches", WARN if notes else OK, detail + ("; " + "; ".join(notes) if notes else ""))


# 4 ---------------------------------------------------------------------------
def check_torch_tpu(ctx: Context, inv: envs.Inventory, got: probe.ProbeResult | None = None) -> Check:
    google = torchtpu.installed_google(inv)
    ctx.driver = libsophon.read(ctx.runner)
    present, driver_text = ctx.driver.present, ctx.driver.text
    ctx.facts["driver"] = driver_text
    if google is not None:
        return Check("torch_tpu", FAIL, f"Google's torch-tpu {google['version']} is installed, not Sophgo's: "
                     f"{torchtpu.COLLISION}. Remove it: pip uninstall torch-tpu")
    if got is None:
        got = probe.run(ctx.runner, ctx.python, probe.script("device.py"), [], timeout=ctx.timeouts["device"])
    if got.data is None:
        return Check("torch_tpu", FAIL, f"the device probe {got.problem}\n{got.stderr_tail}", got.seconds)
    data = got.data
    ctx.facts["torch_tpu"] = (f"importable ({data.get('file')}), available={data['available']}, "
                              f"devices={data['count']}") if data["importable"] else f"not importable ({data['error']})"
    if data["importable"] and data["available"] and data["count"] > 0:
        ctx.device = ctx.man.device
        return Check("torch_tpu", OK, f"Sophgo torch_tpu, {data['count']} device(s); {driver_text}", got.seconds)
    if present and not data["importable"]:
        return Check("torch_tpu", FAIL, f"the SC7 driver is present ({driver_text}) but torch_tpu does not import: "
                     f"{data['error']}. Install Sophgo's wheel: sd-env install --torch-tpu-wheel PATH", got.seconds)
    if present:
        return Check("torch_tpu", FAIL, f"the SC7 driver is present ({driver_text}) but torch_tpu sees no device "
                     "(is_available() is False): check `bm-smi` and the card's firmware", got.seconds)
    why = "torch_tpu is not installed" if not data["importable"] else "torch_tpu sees no device"
    return Check("torch_tpu", SKIPPED, f"skipped: no SC7 card here ({why}; {driver_text}); the checks below "
                 "run on the CPU, and only a card can show the tpu path", got.seconds)


# 5 ---------------------------------------------------------------------------
def check_ulimit(limits: tuple[int, int] | None = None) -> Check:
    """`limits`: (soft, hard), this process's when not given (the training shell inherits them)."""
    soft, hard = limits or resource.getrlimit(resource.RLIMIT_NOFILE)
    shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    if soft == resource.RLIM_INFINITY or soft >= trainenv.NOFILE:
        return Check("ulimit -n", OK, f"open files limit {shown} (>= {trainenv.NOFILE})")
    return Check("ulimit -n", WARN, f"open files limit {shown} < {trainenv.NOFILE}, as the tutorial requires: "
                 + trainenv.nofile_advice(hard))


# 6 ---------------------------------------------------------------------------
def check_linear(ctx: Context, got: probe.ProbeResult | None = None) -> Check:
    if got is None:
        got = probe.run(ctx.runner, ctx.python, probe.script("linear.py"), ["--device", ctx.device],
                        timeout=ctx.timeouts["linear"], env=ONE_THREAD)
    where = _where(ctx)
    if not got.ok or got.data is None:
        return Check("linear smoke", FAIL, f"{where}: {_problem(got)}", got.seconds, ctx.device)
    d = got.data
    return Check("linear smoke", OK, f"{where}: Linear(768, 3) on rand(8, 1024, 768) -> {d['shape']}, max error "
                 f"vs CPU {d['max_error']:.2e} (tolerance {d['tolerance']:g}), {d['seconds']:.3f} s",
                 got.seconds, d["device"])


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


def check_lora_step(ctx: Context, rows: list[status.ComponentStatus],
                    inputs: tuple[Path | None, Path | None, str] | None = None,
                    env_extra: dict[str, str] | None = None, watch: Path | None = None) -> Check:
    """The LoRA step; `inputs` is model_and_data(ctx) when the caller already has it, and
    `env_extra` goes to the training run only (verify --emulate's PYTHONPATH). The watcher
    (precision.py) is on every training run's PYTHONPATH and writes to `watch`: the row names
    the device it measured there (or the probe's own measurement), never the one asked for."""
    started = time.monotonic()
    if ctx.mixed_precision == "fp16" and ctx.device == "cpu":
        ctx.facts["lora"] = "n/a"
        return Check("lora step", NA, "not applicable on the CPU: fp16 needs the card (torch 2.1 has no Half "
                     "conv2d on the CPU); neither passed nor failed", 0.0, "cpu")
    model, data, how = inputs or model_and_data(ctx)
    if model is None or data is None:
        return Check("lora step", FAIL, how, time.monotonic() - started)
    out = ctx.paths.lora_out
    shutil.rmtree(out, ignore_errors=True)
    watch = watch or ctx.paths.cache / "lora-watch.jsonl"
    watch.parent.mkdir(parents=True, exist_ok=True)
    watch.unlink(missing_ok=True)
    script = ctx.paths.checkout("diffusers") / EXAMPLE
    diffusers_row = next((r for r in rows if r.name == "diffusers"), None)
    patched = diffusers_row is not None and all(s == status.APPLIED for s in diffusers_row.patches.values())
    real = script.exists() and patched
    extra = dict(env_extra or {})
    env = hf_env(**{**extra, **precision.watch_env(watch, extra.get("PYTHONPATH") or os.environ.get("PYTHONPATH"))})
    # Always set, cpu too: a stray ACCELERATE_TORCH_DEVICE from the caller's shell must not move the run.
    env["ACCELERATE_TORCH_DEVICE"] = ctx.device
    common = ["--resolution", "32", "--mixed_precision" if real else "--mixed-precision", ctx.mixed_precision]
    if real:
        label = f"the patched {diffusers_row.tag if diffusers_row else 'diffusers'} example script"
        args = ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data),
                "--center_crop", "--train_batch_size", "1", "--max_train_steps", "2", "--seed", "0",
                "--validation_prompt", "a red square", "--num_validation_images", "1",
                "--dataloader_num_workers", "0", "--output_dir", str(out), *common]
        got = probe.run(ctx.runner, ctx.python, script, args, timeout=ctx.timeouts["lora"], env=env)
        got = _judge_script(ctx, got, out, watch)
        unmeasured = ("the training process made no Accelerator.backward call that sd-env's watcher (first on its "
                      "PYTHONPATH, as sitecustomize) could see")
    else:
        why = "the example script is not in diffusers' sdist" if not script.exists() else \
            "the example script's patch is not applied"
        label = f"sd-env's equivalent step ({why})"
        args = ["--model", str(model), "--data", str(data), "--out", str(out),
                "--device", ctx.device, "--steps", "2", *common]
        got = probe.run(ctx.runner, ctx.python, probe.script("lora_step.py"), args,
                        timeout=ctx.timeouts["lora"], env=env)
        unmeasured = "the step reported none"
    ctx.facts["lora"] = label
    seconds = time.monotonic() - started
    placed = placement.measure(ctx.device, got.data, placement.LORA, unmeasured)
    where = _where(ctx) if placed.device and not placed.problem else _asked(ctx)
    if not got.ok or got.data is None:
        return Check("lora step", FAIL, f"{where}, {label}: {_problem(got)}", seconds, placed.device)
    d = got.data
    if not d.get("finite", False) or not d.get("tensors"):
        return Check("lora step", FAIL, f"{where}, {label}: loss {d.get('losses')} finite={d.get('finite')}, "
                     f"{d.get('tensors')} LoRA tensors written", seconds, placed.device)
    if d.get("up_max") == 0.0:
        # LoRA up-weights start at 0. What the unpatched script does on a PrivateUse1 device, where
        # Module.to() makes new parameters and the optimizer keeps stepping the old CPU copies.
        return Check("lora step", FAIL, f"{where}, {label}: it trained nothing: every LoRA up-weight is still 0 "
                     "(the optimizer steps other parameters than the model's: is the diffusers patch's "
                     f".to(accelerator.device) there?); measured: {placed.said()}", seconds, placed.device)
    if placed.problem:
        return Check("lora step", FAIL, f"{where}, {label}: {placed.problem}", seconds, placed.device)
    losses = ", ".join(f"{x:.4f}" for x in d.get("losses", []))
    moved = f"; LoRA weights moved (max |up| {d['up_max']:.1e})" if d.get("up_max") else ""
    return Check("lora step", OK, f"{where}, {label}: 2 steps, loss {losses or 'finite'}, "
                 f"{d['tensors']} LoRA tensors in {Path(d['weights']).name}{moved}; {how}; measured: "
                 f"{placed.said()}", seconds, placed.device)


def _judge_script(ctx: Context, got: probe.ProbeResult, out: Path, watch: Path) -> probe.ProbeResult:
    """The real script prints no JSON: judge it by exit code, its loss and the weights it wrote,
    and where it ran by what the watcher measured in it."""
    if got.problem and not got.problem.startswith("printed no result"):
        return got
    weights = sorted(out.glob("pytorch_lora_weights.*"))
    count = probe.run(ctx.runner, ctx.python, probe.script("lora_weights.py"), [str(out)],
                      timeout=ctx.timeouts["infer"]) if weights else None
    found = (count.data or {}) if count else {}
    seen = precision.read(watch)
    # Full-precision losses from TensorBoard; the progress bar's rounded ones otherwise.
    losses = found.get("losses") or [float(x) for x in _STEP_LOSS.findall(got.stderr)]
    data = {"ok": bool(weights), "losses": losses,
            "finite": bool(losses) and all(math.isfinite(x) for x in losses) and found.get("finite", False),
            "weights": str(weights[0]) if weights else "", "tensors": found.get("tensors", 0),
            "up_max": found.get("up_max"), "trained_devices": sorted(seen.trained_devices),
            "loss_devices": sorted(seen.loss_devices)}
    return probe.ProbeResult(data, None if weights else "wrote no pytorch_lora_weights", got.seconds,
                             got.stderr_tail, got.stderr)


# 8 ---------------------------------------------------------------------------
def _run_inference(ctx: Context, go: Path | None = None, torch_checks: bool = False) -> probe.ProbeResult:
    wait = ["--go", str(go)] if go is not None else []
    wait += ["--torch-checks", ctx.man.device] if torch_checks else []
    return probe.run(ctx.runner, ctx.python, probe.script("lora_infer.py"),
                     ["--model", str(ctx.model or ctx.paths.tiny_sd / "model"), "--lora", str(ctx.paths.lora_out),
                      "--device", ctx.device, "--steps", "2", *wait],
                     timeout=ctx.timeouts["infer"] + (ctx.timeouts["lora"] if go is not None else 0), env=hf_env())


def check_inference(ctx: Context, step: Check, got: probe.ProbeResult | None = None) -> Check:
    if step.status != OK:
        return Check("inference", SKIPPED, f"skipped: the LoRA step did not pass ({step.status})")
    if got is None:
        got = _run_inference(ctx)
    seconds = got.seconds - float((got.data or {}).get("waited", 0.0))  # not the time spent waiting for the step
    placed = placement.measure(ctx.device, got.data, placement.INFERENCE, "the inference probe reported none")
    where = _where(ctx) if placed.device and not placed.problem else _asked(ctx)
    if not got.ok or got.data is None:
        return Check("inference", FAIL, f"{where}: {_problem(got)}", seconds, placed.device)
    if placed.problem:
        return Check("inference", FAIL, f"{where}: {placed.problem}", seconds, placed.device)
    d = got.data
    return Check("inference", OK, f"{where}: 2 steps with the LoRA -> image {d['shape']}; LoRA scale 0 equals the "
                 f"base pipeline (max diff {d['scale0_max_diff']:.1e}); scale 1 differs by {d['scale1_max_diff']:.1e}; "
                 f"measured: {placed.said()}", seconds, placed.device)


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


def environment_block(ctx: Context) -> str:
    """A copy-and-paste block for bug reports, like `diffusers-cli env`."""
    lines = [f"- sd-env version: {__version__}", f"- Platform: {platform.platform()}",
             f"- Manifest: {ctx.man.path} ({ctx.man.name})", f"- Device: {ctx.man.device} wanted, checks ran on "
             f"{ctx.device}{' (emulated)' if ctx.emulated else ''}"]
    lines += [f"- {k}: {v}" for k, v in ctx.facts.items()]
    return "\n".join(lines)


