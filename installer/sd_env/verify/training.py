"""The training rows: a LoRA step of the patched example script, then inference with the LoRA it
wrote (the inference probe starts meanwhile and waits for the step's verdict).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sd_env.patching import status
from sd_env.report import FAIL, NA, OK, SKIPPED
from sd_env.system import fsutil, probe
from sd_env.verify import placement, precision
from sd_env.verify.context import _STEP_LOSS, Check, Context, _asked, _problem, _where, hf_env, model_and_data
from sd_env.verify.readiness import EXAMPLE


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
    script, why = example_script(ctx, rows)
    real = why is None
    extra = dict(env_extra or {})
    env = hf_env(**{**extra, **precision.watch_env(watch, extra.get("PYTHONPATH") or os.environ.get("PYTHONPATH"))})
    # Always set, cpu too: a stray ACCELERATE_TORCH_DEVICE from the caller's shell must not move the run.
    env["ACCELERATE_TORCH_DEVICE"] = ctx.device
    if real:
        label = example_label(rows)
        args = [*example_args(model, data, out, ctx.mixed_precision), "--validation_prompt", "a red square",
                "--num_validation_images", "1"]
        got = probe.run(ctx.runner, ctx.python, script, args, timeout=ctx.timeouts["lora"], env=env)
        got = _judge_script(ctx, got, out, watch)
        unmeasured = ("the training process made no Accelerator.backward call that sd-env's watcher (first on its "
                      "PYTHONPATH, as sitecustomize) could see")
    else:
        label = f"sd-env's equivalent step ({why})"
        args = ["--model", str(model), "--data", str(data), "--out", str(out),
                "--device", ctx.device, "--steps", "2", "--resolution", "32", "--mixed-precision", ctx.mixed_precision]
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


def example_script(ctx: Context, rows: list[status.ComponentStatus]) -> tuple[Path, str | None]:
    """diffusers' LoRA example in the home's checkout, and why it cannot run as the stack patched it (None: it can)."""
    script = ctx.paths.checkout("diffusers") / EXAMPLE
    row = next((r for r in rows if r.name == "diffusers"), None)
    if not script.exists():
        return script, "the example script is not in diffusers' sdist"
    if row is None or not all(s == status.APPLIED for s in row.patches.values()):
        return script, "the example script's patch is not applied"
    return script, None


def example_label(rows: list[status.ComponentStatus]) -> str:
    row = next((r for r in rows if r.name == "diffusers"), None)
    return f"the patched {row.tag if row else 'diffusers'} example script"


def example_args(model: Path, data: Path, out: Path, mixed: str) -> list[str]:
    """The example's arguments for verify's 2 steps on the tiny model (1 sample per step and process)."""
    return ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--center_crop",
            "--train_batch_size", "1", "--max_train_steps", "2", "--seed", "0", "--dataloader_num_workers", "0",
            "--output_dir", str(out), "--resolution", "32", "--mixed_precision", mixed]


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
