"""Tests of sd_env.emulator: the emulated tpu device, its memory, its sccl backend, strict profiles."""
