"""The target environment: finding or creating the interpreter (envs, pythons), what is installed in
it (its inventory, installed components), Sophgo's torch_tpu wheel and its tags, the locked closure and the
extras, the training shell's variables, pip check's judgement. May import core, system and the root modules.
"""
