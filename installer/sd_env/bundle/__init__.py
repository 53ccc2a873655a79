"""Offline bundles: the format (index, members, confinement), creating one, trusting one (anchors,
signatures), installing from one, the model and dataset files they carry. May import patching, target, core,
system and the root modules; never verify, workflows, fleet or commands.
"""
