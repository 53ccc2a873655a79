"""What a `verify --json` report says about its host as data, for `sd-env fleet-report`.

The checks say whether a host is ready; these facts say what it is: which manifest, lock
and patch files (by sha256, so two hosts installed from different bundles are told apart),
each component's checkout and patch states, the key package versions, torch_tpu and the
driver. They come from what the checks already read: nothing is probed again.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sd_env.core import lockfile, state
from sd_env.errors import InputError
from sd_env.system.fsutil import sha256_file
from sd_env.system.paths import Paths
from sd_env.verify.context import PACKAGE_FACTS, Context


def collect(ctx: Context) -> dict[str, Any]:
    man = ctx.man
    lock = None
    if man.lock is not None:
        path = man.lock.files[lockfile.flavour_order(man)[0]]
        lock = {"file": path.name, "sha256": _sha256(path)}
    patch_sha = {p.name: _sha256(p) for comp in man.components for p in comp.patches}
    components = [{"name": row.name, "tag": row.tag, "source": row.source, "head": row.head,
                   "install": row.install, "install_ok": row.install_ok,
                   "patches": {name: {"state": state, "sha256": patch_sha.get(name)}
                               for name, state in row.patches.items()}}
                  for row in ctx.rows]
    installed = ctx.facts.get("torch-tpu")
    return {
        "manifest": {"name": man.name, "sha256": _sha256(man.path)},
        "lock": lock,
        "components": components,
        "packages": {name: ctx.facts[name] for name in PACKAGE_FACTS if name in ctx.facts},
        "torch_tpu": {"version": None if installed in (None, "not installed") else installed,
                      "emulated": ctx.emulated, "detail": ctx.facts.get("torch_tpu")},
        "driver": ctx.driver.as_dict() if ctx.driver else None,  # set by the torch_tpu check
    }


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def provenance(paths: Paths) -> dict[str, Any]:
    """Where and when a report comes from: when it finished (UTC), an id of its own, and the bundle
    the environment was installed from (state.json's record; None when not from a bundle). A fleet
    report calls a report without a finish time, or an old one, stale."""
    try:
        bundle = state.load(paths.state).bundle
    except InputError:  # a damaged record is the sources+patches check's to report, not this one's
        bundle = None
    return {"finished": state.utc_now(), "run_id": str(uuid.uuid4()),
            "bundle": asdict(bundle) if bundle is not None else None}
