"""torch_tpu.tpu.amp.autocast: torch.autocast("tpu") with the card's default dtype."""

from __future__ import annotations

import torch


class autocast(torch.amp.autocast_mode.autocast):
    def __init__(self, enabled: bool = True, dtype: torch.dtype = torch.float16, cache_enabled: bool = True) -> None:
        super().__init__("tpu", enabled=enabled, dtype=dtype, cache_enabled=cache_enabled)
