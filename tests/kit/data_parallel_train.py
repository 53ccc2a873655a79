#!/usr/bin/env python
"""A small real training loop through accelerate, for `accelerate launch` on emulated tpu devices.

    accelerate launch [--multi_gpu --num_processes N] [--mixed_precision fp16] data_parallel_train.py OUT [RANK:STEP]

A fixed 8-sample data set, a global batch of 2 split over the processes (accelerate's data loader
shards it: rank r of N gets samples r, r+N, ...), 4 steps of AdamW with gradient clipping as the
LoRA example does. Each rank saves its parameters to OUT/rank{r}.pt and writes OUT/rank{r}.json: its
device, distributed type, backend, wrapper, the loss of each step gathered over the processes, and
per step whether the optimizer step was skipped and the loss scale after it (fp16). With RANK:STEP the
loss of that process at that step (1-based) is made inf: an overflow on one device only.
"""

import json
import os
import sys

import torch
import torch_tpu  # noqa: F401  (before the Accelerator: "tpu" must be a device, "sccl" a backend)
from accelerate import Accelerator

GLOBAL_BATCH, STEPS = 2, 4

out = sys.argv[1]
inf_rank, inf_step = (int(n) for n in sys.argv[2].split(":")) if len(sys.argv) > 2 else (-1, -1)
accelerator = Accelerator()
torch.manual_seed(0)  # the same model and data in every process
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
data = torch.utils.data.TensorDataset(torch.randn(GLOBAL_BATCH * STEPS, 8), torch.randn(GLOBAL_BATCH * STEPS, 1))
loader = torch.utils.data.DataLoader(data, batch_size=GLOBAL_BATCH // accelerator.num_processes)
model.to(accelerator.device)  # before the optimizer: a move to the emulated device makes new Parameters
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
losses, steps = [], []
for step, (x, y) in enumerate(loader, 1):
    loss = torch.nn.functional.mse_loss(model(x), y)
    if (accelerator.process_index, step) == (inf_rank, inf_step):
        loss = loss * float("inf")
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    steps.append({"skipped": accelerator.optimizer_step_was_skipped,
                  "scale": accelerator.scaler.get_scale() if accelerator.scaler else None})
    losses.append(accelerator.gather(loss.detach().repeat(x.shape[0])).mean().item())
accelerator.wait_for_everyone()
torch.save([p.detach().cpu() for p in accelerator.unwrap_model(model).parameters()],
           os.path.join(out, f"rank{accelerator.process_index}.pt"))
with open(os.path.join(out, f"rank{accelerator.process_index}.json"), "w") as f:  # ranks share one stdout
    json.dump({"rank": accelerator.process_index, "device": str(accelerator.device),
               "type": str(accelerator.distributed_type), "backend": accelerator.state.backend,
               "wrapper": type(model).__name__, "losses": losses, "steps": steps}, f)
