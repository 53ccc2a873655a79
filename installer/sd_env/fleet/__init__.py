"""Many hosts at once: `sd-env fleet-report` reading hosts' `verify --json` reports (reports, the
facts in them), and the Ansible inventory they are checked against. May import verify and everything below;
never workflows or commands.
"""
