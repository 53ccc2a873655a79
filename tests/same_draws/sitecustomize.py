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
