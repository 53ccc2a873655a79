"""sd-env: reproducible environments for Stable Diffusion LoRA on Sophgo SC7."""

__version__ = "0.1.0"
