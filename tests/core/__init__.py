"""Tests of sd_env.core: manifests, locks, settings, shipped stacks, run records."""
