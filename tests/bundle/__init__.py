"""Tests of sd_env.bundle: offline bundles, what they carry, and the trust anchored outside them."""
