"""The checks of `sd-env verify` (environment, device, training, inference), the emulated device's
runner and build (emulation, emulated), what a probe's rows prove (placement, precision), readiness, and a port's
proof on the emulated device. May import patching, target, core, system and the root modules; never bundle,
workflows, fleet or commands.
"""
