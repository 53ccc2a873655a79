"""Probe: count the tensors in a LoRA weights file (safetensors or a torch .bin).

Prints one JSON object: {"ok", "file", "tensors", "finite"}.
"""

import json
import math
import sys
from pathlib import Path


def main(folder):
    files = sorted(Path(folder).glob("pytorch_lora_weights.*"))
    if not files:
        return {"ok": False, "error": f"no pytorch_lora_weights.* in {folder}"}
    path = files[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    else:
        import torch

        tensors = torch.load(str(path), map_location="cpu")
    finite = all(math.isfinite(float(t.float().abs().max())) for t in tensors.values())
    return {"ok": bool(tensors) and finite, "file": str(path), "tensors": len(tensors), "finite": finite}


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1])))
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(1)
