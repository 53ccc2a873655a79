"""The effects: every subprocess (runner), git, the file system (atomic writes, hashes), the home's
folders and lock (paths, homelock), the tools found on the machine (uv), the driver, the probes' launcher, and
the fault points tests kill sd-env at. May import only the root modules (errors, report): it knows nothing of
manifests, stacks or commands.
"""
