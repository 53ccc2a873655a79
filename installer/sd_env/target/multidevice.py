"""Several tpu devices from one home: does its accelerate have the multi-device patch, and the
launcher command that starts one process per device (accelerate's own).

accelerate 0.16.0 knows several processes only for CUDA; patches/accelerate-0.16.0-tpu-multi.diff
teaches it Sophgo's "tpu" (process group on the plugin's "sccl" backend, process k on tpu:k, the
gradients averaged in backward()). A stack asks for that patch in its manifest (the shipped one is
sc7-sd14-lora-multi); what decides here is what the home's state records as applied, because that
is what the target's accelerate holds. `sd-env train --devices` and `sd-env verify --devices` both
start their runs from here.
"""

from __future__ import annotations

import socket
from pathlib import Path

from sd_env.core import stacks, state
from sd_env.errors import InputError
from sd_env.system.paths import Paths

MULTI_SUFFIX = "-tpu-multi.diff"


def applied_multi_patch(paths: Paths) -> tuple[str | None, list[str]]:
    """The multi-device patch the home's accelerate has (None: none), and every patch applied to it."""
    comp = state.load(paths.state).components.get("accelerate")
    applied = [p.name for p in comp.patches] if comp else []
    return next((name for name in applied if name.endswith(MULTI_SUFFIX)), None), applied


def require_multi_patch(paths: Paths, accelerate_version: str | None) -> str:
    """The applied multi-device patch's name, or an InputError naming the patch and the stack that has it."""
    found, applied = applied_multi_patch(paths)
    if found:
        return found
    # The shipped stack with this accelerate release and a multi-device patch (0.30.1's is named for the
    # 0.30.0 port it goes on top of, so the name alone does not find it).
    stack, wanted = next(((m.name, p.name) for m in stacks.shipped() for c in m.components
                          if c.name == "accelerate" and c.version == accelerate_version
                          for p in c.patches if p.name.endswith(MULTI_SUFFIX)),
                         (None, f"accelerate-{accelerate_version or 'X'}{MULTI_SUFFIX}"))
    has = "applied: " + ", ".join(applied) if applied else "no patch recorded"
    message = (f"several devices need accelerate's multi-device patch {wanted}, and the accelerate of {paths.home} "
               f"lacks it ({has}; without it accelerate does not start one process per tpu device)")
    if stack is None:
        raise InputError(message + f"; no shipped stack carries {wanted}",
                         "train on one device (--device tpu:N), or on a stack whose accelerate has a multi-device "
                         "patch (`sd-env stacks`)")
    raise InputError(message, f"install the stack that carries it in a home of its own: sd-env install -m {stack} "
                              "--home DIR, then train with --home DIR (or add the patch after the tutorial's in your "
                              "manifest's accelerate patches and run sd-env install)")


def free_port() -> int:
    """A TCP port free on this host now, for the processes' rendezvous (the launcher's --main_process_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launcher(python: Path, processes: int, mixed: str) -> list[str]:
    """accelerate's own launcher, one process per device (process k on tpu:k): the argv before the script
    and its arguments."""
    return [str(python), "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", mixed, "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]
