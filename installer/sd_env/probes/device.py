"""Probe: is Sophgo's torch_tpu importable and is a card visible to it?

Prints one JSON object. Never raises: an import failure is a result.
"""

import json
import sys
import time


def device_facts():
    started = time.monotonic()
    result = dict(importable=False, available=False, count=0, error=None)
    try:
        import torch  # noqa: F401 - torch_tpu registers itself on torch's PrivateUse1 backend
        import torch_tpu

        result["importable"] = True
        result["file"] = getattr(torch_tpu, "__file__", None)
        result["available"] = bool(torch_tpu.tpu.is_available())
        result["count"] = int(torch_tpu.tpu.device_count()) if result["available"] else 0
    except Exception as exc:  # report, do not crash: the caller judges
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


if __name__ == "__main__":
    print(json.dumps(device_facts()))
    sys.exit(0)
