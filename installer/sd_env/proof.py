"""A ported patch's proof on the emulated device, for `sd-env repatch`.

A port that applies and compiles is not yet a port that works: the lines our
patches add run only on a "tpu" device. When the emulation can be built for
the target's torch, the component's proof probe runs on it in the target
environment (the emulation only on PYTHONPATH for that run).
"""

from __future__ import annotations

from pathlib import Path

from sd_env import emulation, probe
from sd_env.errors import SdEnvError
from sd_env.paths import Paths
from sd_env.report import FAIL, OK, SKIPPED, Result, progress
from sd_env.runner import Runner

# component -> (probe, what it proves)
PROOFS = {
    "accelerate": ("accelerate_proof.py", "an fp16 Accelerator on tpu:0 gets torch_tpu's GradScaler, trains 2 steps "
                   "and skips the step with an injected inf"),
}
TIMEOUT = 600.0


def after_port(runner: Runner, python: Path, paths: Paths, component: str) -> list[Result]:
    """The proof's result row, or no row for a component without a proof."""
    if component not in PROOFS:
        return []
    script, claim = PROOFS[component]
    progress(f"proving the port of {component} on the emulated tpu")
    try:
        emu = emulation.build(runner, python, paths)
    except SdEnvError as exc:
        return [Result(component, "proof", SKIPPED, f"skipped: ported, not proven: the emulated torch_tpu is not "
                       f"available ({exc.message}{' -> ' + exc.hint if exc.hint else ''})")]
    got = probe.run(runner, python, probe.script(script), [], timeout=TIMEOUT,
                    env=emulation.environment(emu))
    if got.ok and got.data is not None:
        steps = got.data.get("steps", [])
        scales = f" (scale {steps[-1]['scale_before']:g} -> {steps[-1]['scale_after']:g})" if steps else ""
        return [Result(component, "proof", OK, f"ported and proven (emulated): {claim}{scales}", got.seconds)]
    data = got.data or {}
    why = got.problem or data.get("error") or ", ".join(
        f"{k}={data.get(k)}" for k in ("device", "scaler", "trained", "skipped_on_inf"))
    tail = f"\n{got.stderr_tail}" if got.stderr_tail else ""
    return [Result(component, "proof", FAIL, f"ported, but the proof failed on the emulated tpu: {why}{tail}",
                   got.seconds)]
