"""`sd-env verify`: will this environment train? Every check, in order, as a result.

Checks 1-5 read the environment; 6-8 run real work (a Linear layer, a LoRA
training step, inference with the LoRA) on the SC7 card when there is one,
else on the CPU, and every row says which device it really used.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sd_env.patching import status
from sd_env.report import SKIPPED
from sd_env.target import envs, torchtpu, trainenv
from sd_env.verify import parallel
from sd_env.verify.context import Check, Context, _nothing, recorder
from sd_env.verify.device import _split, _torch_checks, check_linear, check_torch_tpu
from sd_env.verify.environment import check_ulimit, environment_checks
from sd_env.verify.training import _lora_and_inference


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
    if ctx.devices > 1:
        parallel.card_rows(ctx, rows, started, done)
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
