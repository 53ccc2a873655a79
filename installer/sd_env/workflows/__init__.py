"""What the long commands do, below their command lines: install, repatch (and the patch files a
port refreshes), model lock/fetch, train (devices.py: one process per device), run/shell,
rehearse. May import verify, bundle and everything below; never fleet or commands.
"""
