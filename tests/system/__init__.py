"""Tests of sd_env.system: the runner, the probe launcher, faults and interrupted runs."""
