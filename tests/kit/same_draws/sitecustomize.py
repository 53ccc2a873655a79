"""Test harness (on PYTHONPATH only for the data-parallel proof): every sample of a step draws the same numbers.

The example script draws the VAE's latent sample (torch.randn), the noise (torch.randn_like) and the
timesteps (torch.randint) once per step for its whole batch. Two processes with one sample each and one
process with both samples would draw different numbers for the same sample, so their LoRA weights could
not be compared. Here the n-th call of each of those functions draws one row from a CPU generator seeded
by (function, n) and repeats it over the batch: a sample's draws depend on the step alone, whichever
process or batch row it lands in. Everything else is the real script.

With $SD_ENV_TEST_WEIGHTS set (a folder), each process also writes the parameters its optimizer
stepped, as they are after the last step, to rank<RANK>.pt: the weights every rank holds.
"""

import atexit
import os

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_randn, _randint = torch.randn, torch.randint
_calls = {"randn": 0, "randint": 0}


def _generator(name: str) -> torch.Generator:
    _calls[name] += 1
    return torch.Generator().manual_seed(1_000_003 * (name == "randint") + _calls[name])


def _size(args: tuple) -> tuple:
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else tuple(args)


def randn(*args, generator=None, device=None, dtype=None, layout=None, **kw):
    size = _size(args)
    row = _randn(size[1:], generator=_generator("randn"), dtype=torch.float32)
    return row.expand(size).to(device=device, dtype=dtype or torch.get_default_dtype()).contiguous()


def randn_like(x, dtype=None, device=None, **kw):
    return randn(tuple(x.shape), device=device or x.device, dtype=dtype or x.dtype)


def randint(low, high=None, size=None, generator=None, device=None, dtype=None, **kw):
    if high is None or size is None:  # randint(high, size): not what the script calls
        return _randint(low, high, size, generator=generator, device=device, dtype=dtype, **kw)
    one = _randint(low, high, (1,), generator=_generator("randint"))
    return one.expand(tuple(size)).to(device=device, dtype=dtype or torch.int64).contiguous()


torch.randn, torch.randn_like, torch.randint = randn, randn_like, randint


_stepped: list = []


def _after_step(optimizer, args, kwargs) -> None:
    _stepped[:] = [p.detach().to("cpu", copy=True) for g in optimizer.param_groups for p in g["params"]]


def _write() -> None:
    if not _stepped:  # a process that trained nothing (accelerate's launcher) leaves no file
        return
    torch.save(_stepped, os.path.join(os.environ["SD_ENV_TEST_WEIGHTS"], f"rank{os.environ.get('RANK', '0')}.pt"))


if os.environ.get("SD_ENV_TEST_WEIGHTS"):
    register_optimizer_step_post_hook(_after_step)
    atexit.register(_write)


# With $SD_ENV_TEST_INF_AT="RANK:N" the N-th loss of process RANK is made inf (fp16 proof), and each
# process writes, per optimizer step of accelerate, whether it was skipped and the scale after it,
# to $SD_ENV_TEST_WEIGHTS/steps<RANK>.json.
if os.environ.get("SD_ENV_TEST_INF_AT") and os.environ.get("SD_ENV_TEST_WEIGHTS"):
    import json

    import torch.nn.functional as F
    from accelerate.optimizer import AcceleratedOptimizer

    _inf_rank, _inf_call = os.environ["SD_ENV_TEST_INF_AT"].split(":")
    _losses = [0]
    _steps: list = []
    _mse, _step = F.mse_loss, AcceleratedOptimizer.step

    def mse_loss(*args, **kwargs):
        loss = _mse(*args, **kwargs)
        _losses[0] += 1
        if os.environ.get("RANK", "0") == _inf_rank and _losses[0] == int(_inf_call):
            loss = loss * float("inf")
        return loss

    def step(self, *args, **kwargs):
        _step(self, *args, **kwargs)
        if self.scaler is not None:
            _steps.append({"skipped": bool(self.step_was_skipped), "scale": float(self.scaler.get_scale())})

    def _write_steps() -> None:
        if _steps:
            with open(os.path.join(os.environ["SD_ENV_TEST_WEIGHTS"], f"steps{os.environ.get('RANK', '0')}.json"),
                      "w") as f:
                json.dump(_steps, f)

    F.mse_loss, AcceleratedOptimizer.step = mse_loss, step
    atexit.register(_write_steps)
