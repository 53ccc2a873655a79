"""The patched upstream components: sources (git clone at a pinned commit, sdist fallback,
checkouts), patch series (check, apply atomically, record), the plan of what a component still needs, its
status, Sophgo's in-place patches, and porting a series to another release (port, ladder). May import target,
core, system and the root modules.
"""
