"""Probe: torch_tpu's device facts, then the Linear smoke test, in one process.

Importing torch costs seconds; `verify --quick` pays it once instead of once per
check. The smoke test runs on --want (the manifest's device) when torch_tpu sees
a card, else on the CPU, as verify's torch_tpu row decides.

    python torch_checks.py --want tpu:0   ->   {"device": {...}, "linear": {...}}
"""

import argparse
import json
import os
import threading
import traceback

from device import device_facts
from linear import smoke


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--want", default="tpu:0")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--device-timeout", type=float, help="give up on a torch_tpu import that hangs")
    args = parser.parse_args()
    found = threading.Event()
    if args.device_timeout:
        # The device facts keep their own, shorter timeout inside this longer-lived process.
        def expire():
            if not found.wait(args.device_timeout):
                print(json.dumps({"ok": False, "device_timeout": args.device_timeout}), flush=True)
                os._exit(124)

        threading.Thread(target=expire, daemon=True).start()
    result = run_checks(args.want, args.tolerance, found)
    print(json.dumps({"ok": True, **result}))


def run_checks(want, tolerance=1e-3, found=None):
    """{"device": ..., "linear": ...}; also used by lora_infer.py, which imports torch anyway."""
    device = device_facts()
    if found is not None:
        found.set()
    on_card = device["importable"] and device["available"] and device["count"] > 0
    try:
        linear = smoke(want if on_card else "cpu", tolerance)
    except Exception as exc:  # a result, never a crash: the device row must still be reported
        traceback.print_exc()
        linear = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"device": device, "linear": linear}


if __name__ == "__main__":
    main()
