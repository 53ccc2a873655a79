"""Tests of sd_env.commands: every command's JSON, the report renderer, the bad-input corpus."""
