"""sd-env: reproducible environments for Stable Diffusion LoRA on Sophgo SC7.

The packages, lowest first: system (effects), core (the model of a stack), target (the target
environment), patching, verify and bundle, workflows and fleet, commands; a package may import only
from those before it (tests/test_layout.py checks). errors and report sit below them all, cli (the
assembly of the commands) above; probes/ and emulator/ run inside the target and import no sd-env.
See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
