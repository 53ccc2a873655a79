"""`sd-env rehearse`: will the tutorial's run fit on one chip, and does every op run on it?

Builds Stable Diffusion 1.4's architecture with random weights (probes/sd14_arch.py: 1.07
billion parameters from a fixed seed, about 35 s and 4 GiB of disk, into the output folder
and deleted afterwards unless --keep-model), or takes the user's --model, then runs the
patched example script on the emulated tpu (emulation.py) for a few steps per precision in
one process each (probes/rehearse_run.py), and judges what the emulator measured: peak
device memory against a capacity, the ops that ran on the CPU, the loss and the LoRA
weights. Seconds per step and host memory are the emulation's, on this host's CPU: never
the card's. Nothing is written outside the output folder but the run's log.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sd_env.core.manifest import Manifest
from sd_env.errors import InputError, StepError
from sd_env.report import FAIL, OK, WARN, progress
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import emulation
from sd_env.workflows import train

# A BM1684X chip has 16 GB of DRAM (bm1684x_mm_16g.dtsi, see manifests/sc7-sd15-lora.toml); how
# much of it torch_tpu's allocator may use is not documented, hence --capacity.
DEFAULT_CAPACITY = "16G"
LABELS = {"no": "fp32", "fp16": "fp16"}
BUILD_TIMEOUT = 1800.0
GIB = 2**30


@dataclass(frozen=True)
class Options:
    output: Path
    resolution: int = 512
    batch: int = 1
    precisions: tuple[str, ...] = ("no", "fp16")  # --mixed_precision values, run in this order
    steps: int = 2
    capacity: str | None = None  # per chip, "16G"; None: $SD_ENV_EMULATED_MEMORY, the manifest's, 16G
    model: Path | None = None  # the user's diffusers folder; None: SD 1.4's architecture, random weights
    data: Path | None = None
    keep_model: bool = False
    gradient_checkpointing: bool = False
    script: Path | None = None
    search: bool = False  # a precision that ran out in training is run again with candidates(), until one fits


@dataclass(frozen=True)
class Measured:
    """One precision's rehearsal, judged."""

    precision: str  # "fp32" or "fp16"
    status: str  # ok: fits and trains; warn: fits, but ops ran on the CPU; fail: does not fit, or failed
    fits: bool | None  # None: it failed before memory could say
    verdict: str
    peak_bytes: int = 0
    steps_peak_bytes: int | None = None  # the peak as of the last step's end (before the LoRA is saved)
    loaded_bytes: int | None = None  # in use once the models were on the device; None: it ran out before
    capacity_bytes: int = 0
    cpu_fallback: dict[str, int] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    finite: bool = False
    weights_moved: bool = False
    step_seconds: list[float] = field(default_factory=list)
    first_step_seconds: float | None = None
    host_peak_rss_bytes: int = 0
    error: str | None = None
    seconds: float = 0.0
    setting: str = ""  # "": as asked; else the one change --search made to it, e.g. "--resolution 384"


def capacity(flag: str | None, man: Manifest) -> tuple[int, str]:
    """The per-chip capacity in bytes and where it came from."""
    for value, source in ((flag, "--capacity"), (os.environ.get("SD_ENV_EMULATED_MEMORY"), "SD_ENV_EMULATED_MEMORY"),
                          (man.emulator.memory, f"{man.path.name} [emulator] memory")):
        if value:
            return parse_size(value, source), f"{value} ({source})"
    return parse_size(DEFAULT_CAPACITY, ""), (f"{DEFAULT_CAPACITY} (default: a BM1684X's DRAM; how much torch_tpu "
                                              "may use is not documented: --capacity sets it)")


def parse_size(text: str, source: str) -> int:
    """'16G', '1.5G', '512M', bytes -> bytes; the emulator reads the same spellings."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (value[:-1], value[-1]) if value[-1:] in units else (value, "")
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise InputError(f"{source} {text!r}: not a size", "e.g. 16G, 12G, 512M") from None


def judge(label: str, data: dict[str, Any] | None, problem: str | None, seconds: float) -> Measured:
    """What the probe measured -> fits or not, and whether the step trained on the device alone."""
    if data is None or "peak_bytes" not in data:
        why = problem or (data or {}).get("error") or "no result"
        return Measured(label, FAIL, None, f"failed before the emulator could measure: {why}", seconds=seconds)
    d = data
    common = {k: d[k] for k in ("peak_bytes", "steps_peak_bytes", "loaded_bytes", "cpu_fallback", "losses",
                                "step_seconds", "first_step_seconds", "host_peak_rss_bytes", "error") if k in d}
    common.update(capacity_bytes=d.get("capacity_bytes") or 0, finite=bool(d.get("finite")),
                  weights_moved=bool(d.get("up_max")), seconds=seconds)
    cap = common["capacity_bytes"]
    if d.get("oom"):
        return Measured(label, FAIL, False, f"does not fit: ran out of the {gib(cap)} GiB after {gib(d['peak_bytes'])} "
                        "GiB in use", **common)
    if not d.get("ok"):
        return Measured(label, FAIL, None, f"failed: {d.get('error') or problem}", **common)
    if not common["finite"] or not common["weights_moved"]:
        return Measured(label, FAIL, True, f"fits ({gib(d['peak_bytes'])} GiB of {gib(cap)} GiB), but the training "
                        f"is wrong: loss finite={common['finite']}, LoRA weights moved={common['weights_moved']}",
                        **common)
    said = f"fits: {gib(d['peak_bytes'])} GiB of {gib(cap)} GiB"
    if d.get("steps_peak_bytes") and d["peak_bytes"] > 1.05 * d["steps_peak_bytes"]:
        said += (f" (the steps peaked at {gib(d['steps_peak_bytes'])} GiB; the peak came after them, when the script "
                 "converts the UNet to fp32 on the device to save the LoRA)")
    if d["cpu_fallback"]:
        ran = ", ".join(f"{op} ({n} calls)" for op, n in sorted(d["cpu_fallback"].items()))
        count = len(d["cpu_fallback"])
        return Measured(label, WARN, True, f"{said}; but {count} op{'s' if count > 1 else ''} ran on the CPU, not "
                        f"the device: {ran}", **common)
    return Measured(label, OK, True, f"{said}; every op ran on the device", **common)


def gib(count: int) -> str:
    # Three figures below 1 GiB, so a small model's peaks (0.0859 against 0.0938) stay apart.
    return f"{count / GIB:.2f}" if count >= GIB else f"{count / GIB:.3g}"


def candidates(opts: Options, checkpoints: bool = True) -> list[tuple[str, Options]]:
    """The settings --search tries, each one change to the asked run, in order of how little it
    changes the training: the same images with activations recomputed (when the script does:
    `checkpoints`), then smaller images (3/4 and 1/2, a multiple of 8 and at least 64, as the
    script needs), then fewer of them."""
    found = [] if opts.gradient_checkpointing or not checkpoints else [
        ("--gradient-checkpointing", replace(opts, gradient_checkpointing=True))]
    for size in (opts.resolution * 3 // 4, opts.resolution // 2):
        size = max(64, round(size / 8) * 8)
        if size < opts.resolution and f"--resolution {size}" not in dict(found):
            found.append((f"--resolution {size}", replace(opts, resolution=size)))
    if opts.batch > 1:
        found.append(("--batch 1", replace(opts, batch=1)))
    return found


def script_checkpoints(script: Path) -> bool:
    """Whether the script acts on --gradient_checkpointing: diffusers v0.20.0's LoRA example takes
    the flag but never calls unet.enable_gradient_checkpointing() (its full fine-tuning example
    does), so there the flag changes nothing; measured: the same peak at 512 in fp32."""
    return "enable_gradient_checkpointing" in script.read_text(encoding="utf-8", errors="replace")


NO_CHECKPOINTING = ("the script takes --gradient_checkpointing but never calls unet.enable_gradient_checkpointing() "
                    "(diffusers v0.20.0's LoRA example): it changes nothing")


def searchable(m: Measured, steps: int) -> bool:
    """An asked run that ran out of memory in its steps: a smaller setting may fit. Not one that ran
    out while the frozen weights moved to the device, nor one that ran out after its steps (the
    script's fp32 UNet, to save the LoRA): no setting --search tries changes those."""
    return not m.setting and m.fits is False and m.loaded_bytes is not None and len(m.losses) < steps


def advice(measured: list[Measured], opts: Options, checkpoints: bool = True) -> list[str]:
    """What would make an asked setting that does not fit fit: what was measured here (the other
    precision, the runs of --search), else the settings to rehearse next, said as not measured."""
    said = []
    tries = [setting for setting, _ in candidates(opts, checkpoints)]
    asked = [m for m in measured if not m.setting]
    fitting = [m for m in asked if m.fits]
    for m in asked:
        if m.fits is not False:
            continue
        if fitting:
            said.append(f"{m.precision} does not fit; {', '.join(f.precision for f in fitting)} does (measured "
                        "above): train with --mixed_precision fp16")
        halve = m.precision == "fp32" and not any(x.precision == "fp16" for x in asked)  # fp16 not tried yet
        if m.loaded_bytes is None:
            said.append(f"{m.precision} ran out while the frozen weights moved to the device, before training: "
                        "a smaller resolution or batch, or gradient checkpointing, cannot help"
                        + ("; fp16 halves the weights: rehearse with --mixed-precision fp16" if halve else ""))
            continue
        if len(m.losses) >= opts.steps:
            said.append(f"{m.precision}'s {opts.steps} steps fit (they peaked at {gib(m.steps_peak_bytes or 0)} GiB); "
                        "it ran out after them, when the script converts the UNet to fp32 on the device to save the "
                        "LoRA: a smaller resolution or batch, or gradient checkpointing, cannot help that")
            continue
        searched = [s for s in measured if s.setting and s.precision == m.precision]
        fp16 = "; fp16 was not rehearsed: --mixed-precision fp16" if halve else ""
        if searched:
            said.append(searched_said(m.precision, searched, opts) + fp16)
        elif tries or halve:
            said.append(f"{m.precision} ran out in training, with {gib(m.loaded_bytes)} GiB of models on the device"
                        + (f"; not measured yet: {', '.join(tries)} (--search measures them)" if tries else "")
                        + fp16)
    in_training = any(searchable(m, opts.steps) for m in asked)  # where checkpointing would have been offered
    if not checkpoints and (in_training or opts.gradient_checkpointing):
        said.append(NO_CHECKPOINTING + ("" if opts.gradient_checkpointing else ", so it is not offered"))
    return said


def searched_said(precision: str, searched: list[Measured], opts: Options) -> str:
    """One precision's search in a sentence: the setting that fits, with its numbers, or that none did."""
    said = (f"{precision} does not fit at {opts.resolution} x {opts.resolution}, batch {opts.batch}"
            + (" with --gradient-checkpointing; " if opts.gradient_checkpointing else "; "))
    missed = [s.setting for s in searched if s.fits is False]
    failed = "".join(f"; with {s.setting} it failed: {s.verdict}" for s in searched if s.fits is None)
    fit = next((s for s in searched if s.fits), None)
    if fit is None:
        return said + (f"none of {', '.join(missed)} fits either (measured; combinations of them were not tried)"
                       if missed else "no setting was measured to fit") + failed
    return (said + f"with {fit.setting} it fits (measured: {gib(fit.peak_bytes)} GiB of {gib(fit.capacity_bytes)} "
            "GiB)" + (f"; {', '.join(missed)} did not (measured)" if missed else "") + failed)


def script_args(model: Path, data: Path, out: Path, mixed: str, opts: Options) -> list[str]:
    """The tutorial's flags (train.TUTORIAL) at the rehearsal's size, for a few steps, no validation."""
    settings = dict(train.TUTORIAL)
    settings.pop("--validation_prompt")  # validation is inference; the rehearsal measures training
    settings.update({"--mixed_precision": mixed, "--resolution": str(opts.resolution),
                     "--train_batch_size": str(opts.batch), "--max_train_steps": str(opts.steps),
                     "--dataloader_num_workers": "0"})
    if opts.gradient_checkpointing:
        settings["--gradient_checkpointing"] = None
    defaults = [("--pretrained_model_name_or_path", str(model)), ("--train_data_dir", str(data)),
                *settings.items(), ("--output_dir", str(out))]
    return train.merged_args(defaults, [])


def inputs(runner: Runner, python: Path, opts: Options, out: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The model and data folders: the user's, else built into the output folder."""
    if opts.model is not None and not (opts.model / "model_index.json").is_file():
        raise InputError(f"--model {opts.model}: no model_index.json", "give a diffusers Stable Diffusion folder")
    if opts.data is not None:
        train.dataset_kind(opts.data)  # an InputError when it is not a dataset
    built = out / "sd14-arch"
    if opts.model is not None and opts.data is not None:
        return opts.model, opts.data, {"model": str(opts.model), "built": False}
    if opts.model is not None:
        argv, label = ["--out", str(built), "--data-only"], "making the dataset"
    else:
        progress("building Stable Diffusion 1.4's architecture with random weights (1.07 billion parameters, "
                 f"4 GiB in {built}; about 35 s here)")
        argv, label = ["--out", str(built)], "building SD 1.4's architecture"
    got = probe.run(runner, python, probe.script("sd14_arch.py"), argv, timeout=BUILD_TIMEOUT, label=label)
    if not got.ok or got.data is None:
        raise StepError(f"{label} failed: {got.problem or (got.data or {}).get('error')}\n{got.stderr_tail}")
    info = {k: got.data[k] for k in ("parameters", "bytes", "build_seconds", "peak_rss_bytes", "cached")
            if k in got.data}
    if opts.model is None:
        progress(f"built in {got.data.get('build_seconds', got.seconds):.1f} s: " + ", ".join(
            f"{name} {count / 1e6:.1f}M" for name, count in got.data["parameters"].items()))
    return (opts.model or built / "model", opts.data or built / "data",
            {"model": str(opts.model or built / "model"), "built": opts.model is None, **info})


def run(man: Manifest, paths: Paths, runner: Runner, python: Path, opts: Options) -> tuple[list[Measured], dict]:
    """Every precision's rehearsal, and what the report says about the settings and the model."""
    if opts.resolution < 64 or opts.resolution % 8 or opts.batch < 1 or opts.steps < 2:
        raise InputError(f"--resolution {opts.resolution} --batch {opts.batch} --steps {opts.steps}",
                         "a resolution of at least 64 and a multiple of 8, a batch of 1 or more, 2 steps or more "
                         "(the first step's time includes loading the models)")
    script = train.find_script(paths, opts.script)
    cap, cap_from = capacity(opts.capacity, man)
    emu = emulation.build(runner, python, paths)
    setup = emulation.settings(man, emu)
    out = opts.output.resolve()
    out.mkdir(parents=True, exist_ok=True)
    progress(f"rehearsing at {opts.resolution} x {opts.resolution}, batch {opts.batch}, {opts.steps} steps, "
             f"{' and '.join(LABELS[p] for p in opts.precisions)} on the emulated tpu (torch_tpu {emu.era} on this "
             f"CPU), capacity {cap_from}"
             + ("; at this size a step of the full network takes minutes on a CPU" if opts.resolution >= 256 else ""))
    checkpoints = script_checkpoints(script)
    if opts.gradient_checkpointing and not checkpoints:
        progress(f"--gradient-checkpointing: {NO_CHECKPOINTING}")
    model, data, about = inputs(runner, python, opts, out)
    env = {**emulation.environment(emu, "tpu:0", setup), "SD_ENV_EMULATED_MEMORY": str(cap),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / ".hf-home")}

    def one_run(mixed: str, run_opts: Options, setting: str = "") -> Measured:
        label = LABELS[mixed]
        folder = out / (label + setting.replace("--", "-").replace(" ", "-"))  # each searched run its own
        named = f"{label} with {setting}" if setting else label
        shutil.rmtree(folder, ignore_errors=True)
        progress(f"{named}: loading the model onto the emulated tpu, then {opts.steps} steps")
        started = time.monotonic()
        got = probe.run(runner, python, probe.script("rehearse_run.py"),
                        [str(script), *script_args(model, data, folder, mixed, run_opts)],
                        timeout=900 + 3600 * opts.steps, env=env, label=f"rehearsing {named}")
        m = replace(judge(label, got.data, got.problem, time.monotonic() - started), setting=setting)
        if m.status == FAIL and m.error is None and got.stderr_tail:
            m = replace(m, error=got.stderr_tail.splitlines()[-1])
        progress(f"{named}: {m.verdict}" + (f" ({steps_said(m)})" if m.step_seconds else ""))
        return m

    measured: list[Measured] = []
    try:
        measured += [one_run(mixed, opts) for mixed in opts.precisions]
        for m in [m for m in measured if opts.search and searchable(m, opts.steps)]:
            tries = candidates(opts, checkpoints)
            progress(f"{m.precision} ran out in training: --search runs it again with "
                     f"{', '.join(setting for setting, _ in tries)} in turn until one fits (each about as long "
                     "as the run above)" if tries else f"{m.precision}: --search has no smaller setting to try")
            mixed = next(k for k, v in LABELS.items() if v == m.precision)
            for setting, run_opts in tries:
                measured.append(one_run(mixed, run_opts, setting))
                if measured[-1].fits:
                    break
    finally:
        shutil.rmtree(out / ".hf-home", ignore_errors=True)
        if about.get("built") and not opts.keep_model:
            shutil.rmtree(out / "sd14-arch", ignore_errors=True)
    about.update(kept=bool(about.get("built") and opts.keep_model), capacity=cap_from, capacity_bytes=cap,
                 script=str(script), script_checkpoints=checkpoints,
                 emulator=f"torch_tpu {emu.era} emulation ({emu.key})", settings=asdict(opts) | {"output": str(out)})
    return measured, about


def steps_said(m: Measured) -> str:
    each = ", ".join(f"{s:.1f}" for s in m.step_seconds)
    return f"seconds per step after the first: {each}; host RAM peak {gib(m.host_peak_rss_bytes)} GiB (emulation)"


def rows(measured: list[Measured]) -> list[list[str]]:
    """The report's table: one row per run, the asked ones first, then those of --search."""
    return [[m.precision, m.setting or "as asked", m.status, m.verdict, f"{gib(m.peak_bytes)}" if m.peak_bytes else "-",
             gib(m.steps_peak_bytes) if m.steps_peak_bytes else "-",
             ", ".join(f"{s:.1f}" for s in m.step_seconds) or "-",
             gib(m.host_peak_rss_bytes) if m.host_peak_rss_bytes else "-",
             ", ".join(f"{x:.4f}" for x in m.losses) or "-"] for m in measured]


COLUMNS = ("precision", "setting", "status", "verdict", "peak tpu GiB", "of it in the steps",
           "s/step (emulated, this CPU)", "host RAM GiB (emulated)", "loss")


def json_body(measured: list[Measured], about: dict[str, Any], opts: Options) -> dict[str, Any]:
    return {"runs": [asdict(m) for m in measured], "about": about,
            "advice": advice(measured, opts, about.get("script_checkpoints", True)),
            "note": "seconds per step and host RAM are the emulation's on this host's CPU, not the card's; peak "
                    "tpu memory is the emulated allocator's count of the tensors the run put on the device"}
