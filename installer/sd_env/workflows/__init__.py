"""What the long commands do, below their command lines: install, repatch (and the patch files a
port refreshes), model lock/fetch, train, run/shell, rehearse. May import verify, bundle and everything below;
never fleet or commands.
"""
