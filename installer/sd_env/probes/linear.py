"""Probe: the tutorial's smoke test, nn.Linear(768, 3) on rand(8, 1024, 768).

Runs on --device, copies the result back and compares it with the same
computation on the CPU. Prints one JSON object on the last line.
"""

import argparse
import time

from _result import report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    args = parser.parse_args()
    return smoke(args.device, args.tolerance)


def smoke(device_name, tolerance=1e-3):
    import torch

    if device_name != "cpu":
        import torch_tpu  # noqa: F401 - makes the "tpu" device type valid

    torch.manual_seed(0)
    layer = torch.nn.Linear(768, 3)
    x = torch.rand(8, 1024, 768)
    expected = layer(x)
    started = time.monotonic()
    device = torch.device(device_name)
    result = layer.to(device)(x.to(device))
    ran_on = str(result.device)  # measured: where the output really is
    out = result.cpu()
    seconds = time.monotonic() - started
    error = float((out - expected).abs().max())
    ok = list(out.shape) == [8, 1024, 3] and error <= tolerance and ran_on.split(":")[0] == device.type
    return {"ok": ok, "device": ran_on, "shape": list(out.shape), "max_error": error,
            "tolerance": tolerance, "seconds": round(seconds, 4)}


if __name__ == "__main__":
    report(main)
