"""sd-env's precision watcher: which dtype did the UNet's matmuls really run in?

Loaded as `sitecustomize` because sd-env puts this folder first on PYTHONPATH
for one training run, so the unmodified training script is what gets measured.
It does nothing unless SD_ENV_PRECISION_OUT names a file. Then:

- a TorchDispatchMode is active during each top-level UNet2DConditionModel
  forward (entered and left by global module hooks) and counts the
  matmul-family ops (mm, addmm, bmm, baddbmm, convolution, attention) by the
  dtype and device of their first floating input. The mode sits below
  autocast and autograd in the dispatcher, so it sees what really ran, after
  any autocast cast; inside a LoRA layer the op counts as "lora", else "base";
  forwards with grad enabled count as "train", the others (validation) "infer";
- accelerate's Accelerator.backward is wrapped (from the first module forward
  on) to record the scaler (class and scale), the autocast state seen by the
  training forward, and where the training really ran: the device of each loss
  it back-propagates and of every parameter its prepared optimizers train
  (verify's LoRA row names these devices, never the one it asked for);
- SD_ENV_PRECISION_WEIGHTS=1 (verify's data-parallel row) also records, per process, its rank
  ($RANK), each loss it back-propagates, and a sha256 of the parameters its optimizers train as they
  were at the first backward and as they are at exit: ranks that end with the same digest hold the
  same weights, and a digest that changed shows the weights moved;
- SD_ENV_PRECISION_FORWARDS=N counts the ops of the first N training forwards only (sd-env
  train: a long run pays the mode's cost per op for a few steps, not for hours);
- at exit, one JSON line with the counts is appended to the file (only by a
  process that ran a UNet forward or a backward).

Any sitecustomize this one shadows is still run first.
"""

import os
import sys

MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "_convolution",
          "scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
          "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math"}
UNET = "UNet2DConditionModel"
LORA = ("LoRALinearLayer", "LoRAConv2dLayer")  # diffusers' own (0.20); peft's (0.29) are marked in pre()


def _run_shadowed():
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or ".") == here:
            continue
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry or "."])
        if spec is not None and spec.loader is not None:
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


def _install(out):
    import atexit
    import json

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {}
    info = {"backward_calls": 0}
    loss_devices, trained_devices = set(), set()
    autocast_seen = set()
    state = {"depth": 0, "lora": 0, "phase": "", "wrapped": False, "forwards": 0, "measuring": False}
    limit = int(os.environ.get("SD_ENV_PRECISION_FORWARDS") or 0)  # 0: every training forward
    weights = os.environ.get("SD_ENV_PRECISION_WEIGHTS") == "1"
    held = []  # the Accelerator whose optimizers train (for the digest at exit)

    def trained(accelerator):
        for optimizer in getattr(accelerator, "_optimizers", []):
            for group in getattr(optimizer, "optimizer", optimizer).param_groups:
                yield from (p for p in group["params"] if p.requires_grad)

    def digest(accelerator):
        import hashlib

        h, count = hashlib.sha256(), 0
        for p in trained(accelerator):
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            count += 1
        return {"sha256": h.hexdigest(), "tensors": count}

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in MATMUL:
                first = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
                if first is not None:
                    part = "lora" if state["lora"] else "base"
                    key = "|".join((state["phase"], part, name, str(first.dtype).replace("torch.", ""),
                                    first.device.type))
                    counts[key] = counts.get(key, 0) + 1
            return func(*args, **(kwargs or {}))

    mode = Watch()

    def autocast_state():
        tpu = sys.modules.get("torch_tpu")
        on_tpu = None
        if tpu is not None and hasattr(tpu, "tpu") and hasattr(tpu.tpu, "is_autocast_enabled"):
            on_tpu = bool(tpu.tpu.is_autocast_enabled())
        return f"cuda={torch.is_autocast_enabled()},cpu={torch.is_autocast_cpu_enabled()},tpu={on_tpu}"

    def wrap_backward():
        acc = sys.modules.get("accelerate.accelerator")
        if acc is None:
            return
        if getattr(acc.Accelerator.backward, "_sd_env_watch", False):
            state["wrapped"] = True
            return
        original = acc.Accelerator.backward

        def backward(self, loss, **kwargs):
            scaler = getattr(self, "scaler", None)
            info["backward_calls"] += 1
            loss_devices.add(str(loss.device))
            # What the optimizer steps is what trains: a parameter it holds on another device than
            # the model's (a stale copy left behind by a .to()) shows up here as that device.
            trained_devices.update(str(p.device) for p in trained(self))
            if weights:
                if not held:
                    held.append(self)
                    info["weights_before"] = digest(self)
                info.setdefault("losses", []).append(float(loss.detach().float().item()))
            info["mixed_precision"] = str(getattr(self, "mixed_precision", ""))
            info["scaler"] = None if scaler is None else f"{type(scaler).__module__}.{type(scaler).__qualname__}"
            if scaler is not None:
                info["scale"] = float(scaler.get_scale())
            return original(self, loss, **kwargs)

        backward._sd_env_watch = True
        acc.Accelerator.backward = backward
        state["wrapped"] = True

    def pre(module, args):
        if not state["wrapped"]:  # any model's forward, whatever its class: a backward follows one
            wrap_backward()
        cls = type(module).__name__
        if cls == UNET:
            if state["depth"] == 0:
                state["phase"] = "train" if torch.is_grad_enabled() else "infer"
                if state["phase"] == "train":
                    autocast_seen.add(autocast_state())
                    state["forwards"] += 1
                # A long run is measured over its first training forwards only (the mode costs time per op).
                state["measuring"] = not (limit and state["forwards"] > limit)
                if state["measuring"]:
                    mode.__enter__()
            state["depth"] += 1
        elif state["depth"] and (cls in LORA or getattr(module, "_sd_env_lora", False)):
            state["lora"] += 1
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict):  # a peft LoRA layer: its A and B
            for part in (*module.lora_A.values(), *module.lora_B.values()):
                part._sd_env_lora = True

    def post(module, args, output):
        cls = type(module).__name__
        if cls == UNET and state["depth"]:
            state["depth"] -= 1
            if state["depth"] == 0 and state["measuring"]:
                mode.__exit__(None, None, None)
        elif state["lora"] and (cls in LORA or getattr(module, "_sd_env_lora", False)):
            state["lora"] -= 1

    torch.nn.modules.module.register_module_forward_pre_hook(pre)
    torch.nn.modules.module.register_module_forward_hook(post)

    def write():
        if not counts and not info["backward_calls"]:
            return
        if held:
            info["weights_after"] = digest(held[0])
            info["rank"] = int(os.environ.get("RANK", "0"))
        record = {"pid": os.getpid(), "argv": sys.argv[:1], "counts": counts, "autocast": sorted(autocast_seen),
                  "loss_devices": sorted(loss_devices), "trained_devices": sorted(trained_devices), **info}
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    atexit.register(write)


_run_shadowed()
if os.environ.get("SD_ENV_PRECISION_OUT"):
    _install(os.environ["SD_ENV_PRECISION_OUT"])
