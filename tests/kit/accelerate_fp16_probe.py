#!/usr/bin/env python
"""fp16 on "tpu" for many accelerate trees at once: one interpreter, one fork per tree.

    python accelerate_fp16_probe.py TORCH_TPU_DIR NAME=SRC_DIR [NAME=SRC_DIR ...]

SRC_DIR holds an `accelerate` package (patched or not); TORCH_TPU_DIR holds a
`torch_tpu` package (the stand-in of real_accelerate_probe.py, or the emulator).
torch is imported once here; each tree is then tried in a forked child (the
PrivateUse1 rename and accelerate's shared state are process-wide, so each
child starts from the same clean parent), with ACCELERATE_TORCH_DEVICE=tpu:0
and Accelerator(mixed_precision="fp16", GradScalerKwargs(init_scale=1024)).
Output: one JSON object, NAME -> {accelerate, file, device, scaler} or {error_type, error}.
"""

import contextlib
import importlib
import json
import os
import sys
import tempfile

import torch  # noqa: F401  (imported once, before the forks)

# What every accelerate release imports and takes seconds to load: once here, not in each child.
for _name in ("torch.distributed.checkpoint", "torch.distributed.fsdp", "torch.utils.data", "numpy", "psutil",
              "yaml", "huggingface_hub", "safetensors.torch"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)


def child(torch_tpu_dir: str, src: str) -> dict:
    os.environ["ACCELERATE_TORCH_DEVICE"] = "tpu:0"
    sys.path[:0] = [src, torch_tpu_dir]
    import accelerate
    import torch_tpu  # noqa: F401  (as training scripts do, so "tpu:0" is a device for every tree)
    from accelerate import Accelerator
    from accelerate.utils import GradScalerKwargs

    try:
        acc = Accelerator(mixed_precision="fp16", kwargs_handlers=[GradScalerKwargs(init_scale=1024.0)])
    except Exception as exc:
        return {"accelerate": accelerate.__version__, "file": accelerate.__file__,
                "error_type": type(exc).__name__, "error": str(exc)}
    scaler = acc.scaler
    return {"accelerate": accelerate.__version__, "file": accelerate.__file__, "device": str(acc.device),
            "scaler": None if scaler is None else f"{type(scaler).__module__}.{type(scaler).__qualname__}",
            "scaler_kwargs": None if scaler is None else {"init_scale": float(scaler.get_scale())}}


def main(argv: list) -> int:
    torch_tpu_dir, trees = argv[0], [a.split("=", 1) for a in argv[1:]]
    results = {}
    for name, src in trees:
        with tempfile.TemporaryFile("w+") as out:
            pid = os.fork()
            if pid == 0:
                try:
                    got = child(torch_tpu_dir, src)
                except BaseException as exc:
                    got = {"error_type": type(exc).__name__, "error": str(exc), "crashed": True}
                out.write(json.dumps(got))
                out.flush()
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            out.seek(0)
            text = out.read()
            results[name] = json.loads(text) if text else {"error_type": "exit", "error": f"status {status}"}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
