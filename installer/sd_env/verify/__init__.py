"""`sd-env verify` and what proves an environment works: the checks split by kind (environment,
device, training: LoRA step and inference), the Check row and Context they share (context), their
order (checks.run), the same checks on the emulated device (emulated) with its build (emulation),
what a probe's rows prove (placement, precision), readiness, and a port's proof on the emulated
device (proof). May import patching, target, core, system and the root modules; never bundle,
workflows, fleet or commands.
"""
