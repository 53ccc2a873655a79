"""torch_tpu.tpu.amp.GradScaler: the CUDA loss scaler's arithmetic, on "tpu".

torch 2.1: the CUDA class does the bookkeeping (step skipping, state_dict);
what it hard-codes for CUDA is redone here: it disables itself without CUDA,
and asserts that tensors are CUDA tensors when scaling and unscaling.
torch 2.8: torch.amp.GradScaler takes a device; the 2.8-era plugin's class
also takes allow_fp16 (unscale fp16 gradients). In both, the two kernels it
calls (_amp_foreach_non_finite_check_and_unscale_, _amp_update_scale_) are
the emulator's own (csrc/scaler.cpp), and a tensor not on "tpu" is refused.
"""

from __future__ import annotations

from collections import abc, defaultdict
from typing import Any

import torch

from torch_tpu import _era

if not _era.TORCH_28:
    from torch.cuda.amp.grad_scaler import GradScaler as _CudaGradScaler
    from torch.cuda.amp.grad_scaler import _refresh_per_optimizer_state
else:
    _CudaGradScaler = object


def _on_tpu(tensor: torch.Tensor) -> None:
    assert tensor.device.type == "tpu", f"GradScaler on tpu got a tensor on {tensor.device}"


class _PerDevice:
    """A tensor copied lazily to each device that asks for it."""

    def __init__(self, master: torch.Tensor) -> None:
        self.master = master
        self.copies: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device) -> torch.Tensor:
        if device not in self.copies:
            self.copies[device] = self.master.to(device=device, non_blocking=True, copy=True)
        return self.copies[device]


class _GradScaler21(_CudaGradScaler):
    """torch 2.1: the CUDA scaler, on "tpu"."""

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        super().__init__(init_scale, growth_factor, backoff_factor, growth_interval, enabled=False)
        self._enabled = enabled
        if enabled:
            assert growth_factor > 1.0, "The growth factor must be > 1.0."
            assert backoff_factor < 1.0, "The backoff factor must be < 1.0."
            self._init_scale = init_scale
            self._scale = None
            self._growth_factor = growth_factor
            self._backoff_factor = backoff_factor
            self._growth_interval = growth_interval
            self._init_growth_tracker = 0
            self._growth_tracker = None
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)

    def scale(self, outputs: Any) -> Any:
        if not self._enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            _on_tpu(outputs)
            if self._scale is None:
                self._lazy_init_scale_growth_tracker(outputs.device)
            return outputs * self._scale.to(device=outputs.device, non_blocking=True)
        copies: list[_PerDevice] = []

        def apply(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                _on_tpu(value)
                if not copies:
                    if self._scale is None:
                        self._lazy_init_scale_growth_tracker(value.device)
                    copies.append(_PerDevice(self._scale))
                return value * copies[0].get(value.device)
            if isinstance(value, abc.Iterable):
                mapped = map(apply, value)
                return type(value)(mapped) if isinstance(value, (list, tuple)) else mapped
            raise ValueError("outputs must be a Tensor or an iterable of Tensors")

        return apply(outputs)

    def _unscale_grads_(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor, found_inf: torch.Tensor,
                        allow_fp16: bool) -> dict[torch.device, torch.Tensor]:
        inv_scales, found_infs = _PerDevice(inv_scale), _PerDevice(found_inf)
        grads: dict[torch.device, dict[torch.dtype, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    if not allow_fp16 and param.grad.dtype == torch.float16:
                        raise ValueError("Attempting to unscale FP16 gradients.")
                    grad = param.grad
                    if grad.is_sparse:
                        if grad.dtype is torch.float16:
                            param.grad = grad = grad.coalesce()
                        grad = grad._values()
                    grads[grad.device][grad.dtype].append(grad)
            for device, per_dtype in grads.items():
                for same_dtype in per_dtype.values():
                    torch._amp_foreach_non_finite_check_and_unscale_(
                        same_dtype, found_infs.get(device), inv_scales.get(device))
        return found_infs.copies

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        if self._enabled and isinstance(new_scale, torch.Tensor):
            reason = "new_scale should be a float or a 1-element tpu float tensor with requires_grad=False."
            assert new_scale.device.type == "tpu" and new_scale.dtype == torch.float32, reason
            assert new_scale.numel() == 1 and new_scale.requires_grad is False, reason
            scale, _ = self._check_scale_growth_tracker("update")
            scale.copy_(new_scale)
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)
            return
        super().update(new_scale)


class _GradScaler28(torch.amp.GradScaler if _era.TORCH_28 else object):  # type: ignore[misc]
    """torch 2.8: torch.amp.GradScaler("tpu"), with the 2.8-era plugin's allow_fp16."""

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True, allow_fp16: bool = False) -> None:
        super().__init__("tpu", init_scale=init_scale, growth_factor=growth_factor, backoff_factor=backoff_factor,
                         growth_interval=growth_interval, enabled=enabled)
        self.allow_fp16 = allow_fp16

    def scale(self, outputs: Any) -> Any:
        if self._enabled:
            stack = [outputs]
            while stack:
                value = stack.pop()
                if isinstance(value, torch.Tensor):
                    _on_tpu(value)
                elif isinstance(value, (list, tuple)):
                    stack.extend(value)
        return super().scale(outputs)

    def _unscale_grads_(self, optimizer: torch.optim.Optimizer, inv_scale: torch.Tensor, found_inf: torch.Tensor,
                        allow_fp16: bool) -> dict[torch.device, torch.Tensor]:
        return super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16 or self.allow_fp16)


GradScaler = _GradScaler28 if _era.TORCH_28 else _GradScaler21
GradScaler.__name__ = GradScaler.__qualname__ = "GradScaler"  # as users and logs see it: torch_tpu...GradScaler
