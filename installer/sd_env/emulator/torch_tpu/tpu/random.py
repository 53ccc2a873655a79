"""Random numbers on the device: one default generator per device.

torch.manual_seed reaches them through manual_seed_all (torch 2.1 calls it
on the module registered for the PrivateUse1 backend).
"""

from __future__ import annotations

import torch

from torch_tpu import _C

default_generators: tuple[torch.Generator, ...] = tuple(
    _C.default_generator(i) for i in range(_C.device_count()))


def _index(device: torch.device | str | int | None) -> int:
    """The device index torch_tpu.tpu's functions take: None or "tpu" is the current device."""
    if device is None:
        return _C.current_device()
    if isinstance(device, int):
        return device
    device = torch.device(device)
    if device.type != "tpu":
        raise ValueError(f"Expected a tpu device, but got: {device}")
    return _C.current_device() if device.index is None else device.index


def _generator(device: torch.device | str | int | None) -> torch.Generator:
    return default_generators[_index(device)]


def manual_seed(seed: int) -> None:
    _generator(None).manual_seed(int(seed))


def manual_seed_all(seed: int) -> None:
    for generator in default_generators:
        generator.manual_seed(int(seed))


def seed() -> None:
    _generator(None).seed()


def seed_all() -> None:
    first = default_generators[0].seed()
    for generator in default_generators[1:]:
        generator.manual_seed(first)


def initial_seed() -> int:
    return _generator(None).initial_seed()


def get_rng_state(device: torch.device | str | int = "tpu") -> torch.Tensor:
    return _generator(device).get_state()


def set_rng_state(new_state: torch.Tensor, device: torch.device | str | int = "tpu") -> None:
    _generator(device).set_state(new_state)


def get_rng_state_all() -> list[torch.Tensor]:
    return [generator.get_state() for generator in default_generators]


def set_rng_state_all(new_states: list[torch.Tensor]) -> None:
    for generator, state in zip(default_generators, new_states):
        generator.set_state(state)
