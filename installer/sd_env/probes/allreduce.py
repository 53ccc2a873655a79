"""Probe: an all-reduce across N tpu devices through the plugin's "sccl" c10d backend.

`allreduce.py --world N` starts N processes of itself (rank r on tpu:r, as accelerate's
multi-device patch places them), each all-reduces a small tensor whose sum is known and a
gradient-sized fp32 buffer (797,184 values: SD 1.4's rank-4 LoRA), and rank 0's findings are
printed as one JSON object: the devices, the sum, the seconds of the large all-reduce, and
whether the backend refused an int64 device tensor (the real one does).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from _result import report

LORA_GRADIENTS = 797_184  # SD 1.4's rank-4 LoRA (bench/multi_device.py computes it from the model)


def rank_main(rank, world):
    import torch
    import torch.distributed as dist
    import torch_tpu

    dist.init_process_group(backend="sccl", rank=rank, world_size=world)
    torch_tpu.tpu.set_device(rank)
    device = f"tpu:{rank}"
    small = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(small)
    grads = torch.ones(LORA_GRADIENTS, device=device)
    dist.barrier()
    started = time.monotonic()
    dist.all_reduce(grads)
    seconds = time.monotonic() - started
    try:
        dist.all_reduce(torch.ones(1, dtype=torch.int32, device=device).to(torch.int64))
        int64 = "accepted"
    except RuntimeError as exc:
        int64 = str(exc).splitlines()[0]
    out = {"rank": rank, "device": str(small.device), "backend": dist.get_backend(), "sum": small.item(),
           "grads_ok": bool((grads == world).all().item()), "seconds": round(seconds, 4), "int64": int64}
    dist.destroy_process_group()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--rank", type=int)
    args = parser.parse_args()
    if args.rank is not None:
        return rank_main(args.rank, args.world)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, __file__, "--world", str(args.world), "--rank", str(r)],
                              env={**env, "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(args.world)]
    outs = [p.communicate(timeout=600) for p in procs]
    failed = [(r, err) for r, (p, (_out, err)) in enumerate(zip(procs, outs)) if p.returncode != 0]
    if failed:
        rank, err = failed[0]
        return {"ok": False, "error": f"rank {rank} failed: {err.strip().splitlines()[-1] if err.strip() else '?'}"}
    ranks = [json.loads(out.splitlines()[-1]) for out, _err in outs]
    expected = args.world * (args.world + 1) / 2
    ok = all(r["sum"] == expected and r["grads_ok"] for r in ranks)
    return {"ok": ok, "world": args.world, "devices": [r["device"] for r in ranks], "backend": ranks[0]["backend"],
            "sum": ranks[0]["sum"], "expected": expected, "bytes": 4 * LORA_GRADIENTS,
            "seconds": max(r["seconds"] for r in ranks), "int64": ranks[0]["int64"],
            "wall": round(time.monotonic() - started, 3)}


if __name__ == "__main__":
    report(main)
