"""Tests of sd_env.patching: patches, shipped ports, the accelerate and diffusers ladders, repatch."""
