"""Shared by the inference probes: where a pipeline's work really ran, measured, never assumed.

`Placed.watch(pipe)` records the device of every parameter of the pipeline's models and, through a
forward hook, of every UNet output; `as_dict()` is what the probes put in their JSON for
sd-env's placement check (installer/sd_env/verify/placement.py)."""


class Placed:
    def __init__(self):
        self.parameter_devices, self.output_devices = set(), set()

    def watch(self, pipe):
        """Every later UNet forward of `pipe`, and its parameters now."""
        pipe.unet.register_forward_hook(lambda module, inputs, out: self.output_devices.add(str(out[0].device)))
        return self.parameters(pipe)

    def parameters(self, pipe):
        """The devices of every parameter of the pipeline's models now (after a LoRA load: the LoRA's too)."""
        import torch

        models = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        self.parameter_devices.update(str(p.device) for m in models for p in m.parameters())
        return pipe

    def as_dict(self):
        return {"parameter_devices": sorted(self.parameter_devices), "output_devices": sorted(self.output_devices)}


def device_plugin(device):
    """The tutorial's and the demo's `import torch_tpu` (it registers the "tpu" device), unless on the CPU."""
    if device == "cpu":
        return None
    import torch_tpu

    return torch_tpu
