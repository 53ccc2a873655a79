"""torch_tpu.tpu.amp: autocast and the loss scaler."""

from torch_tpu.tpu.amp.autocast_mode import autocast
from torch_tpu.tpu.amp.grad_scaler import GradScaler

__all__ = ["GradScaler", "autocast"]
