"""A ported patch's proof on the emulated device, for `sd-env repatch`.

A port that applies and compiles is not yet a port that works: the lines our
patches add run only on a "tpu" device. When the emulation can be built for
the target's torch, the component's proof runs on it in the target environment
(the emulation only on PYTHONPATH for that run):
- accelerate: an fp16 Accelerator on tpu:0 gets torch_tpu's GradScaler, trains
  2 steps and skips the step with an injected inf (probes/accelerate_proof.py);
- diffusers: the patched LoRA example trains 2 fp32 steps on the tiny model on
  tpu:0 and its LoRA weights move.
The diffusers run also decides hunks whose target text is gone from a new
release (`gone_hunks`): the new release's example with the rest of the patch
trains (the hunks are no longer needed) or it does not (they still are).
The device is set up as the manifest's [emulator] says (a strict profile: the
SD 1.5 stack names torch_tpu-2.8, whose plugin refuses int64 on the device), as
for `verify --emulate`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from sd_env.core.manifest import Manifest
from sd_env.errors import SdEnvError
from sd_env.report import FAIL, OK, SKIPPED, Result, progress
from sd_env.system import probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import emulation
from sd_env.verify.context import TIMEOUTS, hf_env
from sd_env.verify.readiness import EXAMPLE

ACCELERATE_CLAIM = ("an fp16 Accelerator on tpu:0 gets torch_tpu's GradScaler, trains 2 steps and skips the step "
                    "with an injected inf")
EXAMPLE_CLAIM = "the LoRA example trained 2 fp32 steps of the tiny model on tpu:0"
PROVEN = ("accelerate", "diffusers")
TIMEOUT = 600.0
OBSOLETE, NEEDED, UNPROVEN = "obsolete", "needed", "unproven"
# What a step fails with when the LoRA layers are left on the CPU beside a model on the device.
_TWO_DEVICES = re.compile(r"Expected all tensors to be on the same device[^\n]*")


def after_port(runner: Runner, python: Path, paths: Paths, component: str,
               man: Manifest | None = None) -> list[Result]:
    """The proof's result row, or no row for a component without a proof. `man`: whose [emulator]
    sets up the device (none: the emulation's defaults)."""
    if component not in PROVEN:
        return []
    if component == "diffusers" and not (paths.checkout(component) / EXAMPLE).exists():
        return [Result(component, "proof", SKIPPED, f"skipped: ported, not proven: {EXAMPLE} is not in this "
                       "checkout (diffusers from its sdist)")]
    progress(f"proving the port of {component} on the emulated tpu")
    try:
        emu = emulation.build(runner, python, paths)
        setup = emulation.settings(man, emu) if man is not None else None  # a profile that is not there refuses
    except SdEnvError as exc:
        return [Result(component, "proof", SKIPPED, f"skipped: ported, not proven: the emulated torch_tpu is not "
                       f"available ({exc.message}{' -> ' + exc.hint if exc.hint else ''})")]
    proven = f"ported and proven (emulated{_strict(setup)})"
    if component == "diffusers":
        verdict, evidence, seconds = _example(runner, python, paths, emu, paths.checkout(component), None, setup)
        if verdict == OBSOLETE:  # here: the patched example trains
            return [Result(component, "proof", OK, f"{proven}: {EXAMPLE_CLAIM}, {evidence}", seconds)]
        return [Result(component, "proof", FAIL, f"ported, but the proof failed on the emulated tpu: {evidence}",
                       seconds)]
    got = probe.run(runner, python, probe.script("accelerate_proof.py"), [], timeout=TIMEOUT,
                    env=emulation.environment(emu, setup=setup))
    if got.ok and got.data is not None:
        steps = got.data.get("steps", [])
        scales = f" (scale {steps[-1]['scale_before']:g} -> {steps[-1]['scale_after']:g})" if steps else ""
        return [Result(component, "proof", OK, f"{proven}: {ACCELERATE_CLAIM}{scales}", got.seconds)]
    data = got.data or {}
    why = got.problem or data.get("error") or ", ".join(
        f"{k}={data.get(k)}" for k in ("device", "scaler", "trained", "skipped_on_inf"))
    tail = f"\n{got.stderr_tail}" if got.stderr_tail else ""
    return [Result(component, "proof", FAIL, f"ported, but the proof failed on the emulated tpu: {why}{tail}",
                   got.seconds)]


def gone_hunks(runner: Runner, python: Path, paths: Paths, component: str, work: Path,
               man: Manifest | None = None) -> tuple[str, str]:
    """Are the hunks whose target text is gone still needed? The work tree holds the new release with
    the rest of the patch; its example runs 2 fp32 steps on the emulated tpu, with the new release's
    library first on the path. The LoRA weights move: OBSOLETE; they do not (or the step fails on two
    devices): NEEDED; anything else (no emulation, no proof for the component, the example cannot run
    here): UNPROVEN. Also the evidence, in words."""
    if component != "diffusers":
        return UNPROVEN, f"sd-env has no proof for {component}'s patches"
    progress("proving whether the hunks are still needed: the example without them, 2 fp32 steps on the emulated tpu")
    verdict, evidence = example(runner, python, paths, work, work / "src", man)
    return verdict, "without them " + evidence


def example(runner: Runner, python: Path, paths: Paths, tree: Path, library: Path | None,
            man: Manifest | None = None) -> tuple[str, str]:
    """`tree`'s LoRA example on the emulated tpu (see _example), building the emulation if need be."""
    try:
        emu = emulation.build(runner, python, paths)
        setup = emulation.settings(man, emu) if man is not None else None
    except SdEnvError as exc:
        return UNPROVEN, f"the emulated torch_tpu is not available ({exc.message})"
    verdict, evidence, _seconds = _example(runner, python, paths, emu, tree, library, setup)
    return verdict, evidence


def _strict(setup: emulation.Settings | None) -> str:
    return f", strict profile {setup.profile.stem}" if setup is not None and setup.profile else ""


def _example(runner: Runner, python: Path, paths: Paths, emu: emulation.Emulator, tree: Path,
             library: Path | None, setup: emulation.Settings | None = None) -> tuple[str, str, float]:
    """`tree`'s LoRA example, 2 fp32 steps of the tiny model on the emulated tpu (`library` first on the
    path when given): OBSOLETE when the LoRA weights moved, NEEDED when they did not or the step found
    two devices, UNPROVEN when it could not run; the evidence; the seconds it took."""
    tiny = probe.run(runner, python, probe.script("tiny_sd.py"), ["--out", str(paths.tiny_sd)], timeout=TIMEOUT,
                     env=hf_env())
    if not tiny.ok:
        return UNPROVEN, f"the tiny model could not be built: {tiny.problem}", tiny.seconds
    out = paths.repatch / "example-proof"
    shutil.rmtree(out, ignore_errors=True)
    env = {**emulation.environment(emu, setup=setup), **hf_env(ACCELERATE_TORCH_DEVICE="tpu:0")}
    if library is not None:
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(library)])
    args = ["--pretrained_model_name_or_path", str(paths.tiny_sd / "model"), "--train_data_dir",
            str(paths.tiny_sd / "data"), "--resolution", "32", "--center_crop", "--train_batch_size", "1",
            "--max_train_steps", "2", "--seed", "0", "--num_validation_images", "0", "--dataloader_num_workers", "0",
            "--mixed_precision", "no", "--output_dir", str(out)]
    ran = probe.run(runner, python, tree / EXAMPLE, args, timeout=TIMEOUTS["lora"], env=env)
    weights = probe.run(runner, python, probe.script("lora_weights.py"), [str(out)], timeout=TIMEOUT)
    shutil.rmtree(out, ignore_errors=True)
    moved = (weights.data or {}).get("up_max")
    if ran.problem and not ran.problem.startswith("printed no result"):
        two = _TWO_DEVICES.search(ran.stderr)
        if two:
            return NEEDED, f"the example's first step fails: {two.group(0)}", ran.seconds
        return UNPROVEN, f"the example does not run in this environment: {ran.problem}\n{ran.stderr_tail}", ran.seconds
    if moved:
        return OBSOLETE, f"its LoRA weights moved (max |up| {moved:.1e})", ran.seconds
    if moved == 0.0:
        return NEEDED, "the example trained nothing: every LoRA up-weight is still 0", ran.seconds
    return UNPROVEN, f"the example wrote no LoRA weights to judge ({weights.problem or 'no up-weights'})", ran.seconds
