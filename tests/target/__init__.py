"""Tests of sd_env.target: finding or making the target environment, its Python and its packages."""
