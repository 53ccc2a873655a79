"""Tests of sd_env.verify: the checks on real environments and on the emulated device."""
