"""The model of a stack: the manifest and its edits, the era lock, the state record, the shipped
stacks, the config file, the model lock and the Hub cache layout, a training run's record. Data and decisions;
the few effects (the lock's uv compile, atomic writes) go through system. May import system and the root
modules.
"""
