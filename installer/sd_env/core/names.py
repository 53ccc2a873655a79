"""Distribution names and versions in the common, simple cases, without importing packaging.

`packaging.utils` costs about 20 ms of start-up (it imports packaging.tags) and
`packaging.requirements` about 40 ms; `sd-env run` reads a manifest and the target's
torch_tpu entry and needs neither for the names and pins every shipped manifest has.
Anything these patterns do not match is left to packaging, so the answers never differ.
"""

from __future__ import annotations

import re

# PEP 503's rule, as packaging.utils.canonicalize_name applies it.
_SEPARATORS = re.compile(r"[-_.]+")
# Versions that are valid PEP 440 for certain: 2.1.0, 2.1.0.post1, 2.1.0+cpu.
RELEASE = re.compile(r"[0-9]+(\.[0-9]+)*(\.post[0-9]+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?")
# An exact pin of a PEP 508 name to such a version: torch==2.1.0.
PIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?==" + RELEASE.pattern)


def canonical(name: str) -> str:
    """The name distributions compare by: `Torch_TPU` and `torch-tpu` are one."""
    return _SEPARATORS.sub("-", name).lower()
