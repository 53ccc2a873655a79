"""Tests of sd_env.workflows: install, run, train (one device and several), rehearse, models."""
