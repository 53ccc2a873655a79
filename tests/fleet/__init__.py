"""Tests of sd_env.fleet and deploy/: the Ansible role, fleet reports, the OCI image."""
