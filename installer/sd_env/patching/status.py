"""`sd-env status`: what is pinned, fetched, patched and installed, and what drifted.

Read-only and offline: no fetch, no pip; git reads and one probe of the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text

from sd_env.core import state
from sd_env.core.manifest import Manifest
from sd_env.errors import SdEnvError
from sd_env.patching import inplace, patches
from sd_env.patching.checkouts import applicable, pinned_commit
from sd_env.patching.plan import Observed, plan
from sd_env.report import Cell, marked
from sd_env.system import gitcmd
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import envs
from sd_env.target import installed as target

APPLIED = "applied"
NOT_APPLICABLE = "not applicable to this source"  # an sdist lacks the file (diffusers' examples/)
# The patch file changed since it was applied (its header, say), but the checkout is exactly what the
# new file produces: nothing to repair; `sd-env install` records the new file.
APPLIED_CHANGED = "applied (patch file changed since; it matches the new file)"


@dataclass
class ComponentStatus:
    name: str
    tag: str
    pinned: str | None
    pin_source: str  # "manifest", "recorded" or "unknown"
    source: str | None  # "git", "sdist" or None (no checkout)
    head: str | None
    patches: dict[str, str] = field(default_factory=dict)  # name -> state (APPLIED, NOT_APPLICABLE, ...)
    edited: list[str] = field(default_factory=list)
    install: str = "unknown"
    install_ok: bool = False  # one editable install of the managed checkout, at the pinned version
    needs: list[str] = field(default_factory=list)
    inplace: str = ""  # "patched in place by Sophgo's in-place patch script (sentinel ...)", when it was

    @property
    def patches_ok(self) -> bool:
        return all(state in (APPLIED, APPLIED_CHANGED, NOT_APPLICABLE) for state in self.patches.values())


def collect(manifest: Manifest, paths: Paths, runner: Runner, python: Path | None,
            inv: envs.Inventory | None = None) -> list[ComponentStatus]:
    """One row per component; `inv` saves a probe when the caller already has the inventory."""
    record = state.load(paths.state)
    names = [c.name for c in manifest.components]
    if python is not None and inv is None:
        inv = envs.inventory(runner, python)
    installed = target.installed(inv, names) if inv is not None else {}
    rows = []
    for comp in manifest.components:
        rec = record.components.get(comp.name)
        checkout = paths.checkout(comp.name)
        pinned = pinned_commit(comp, rec)
        row = ComponentStatus(
            comp.name, comp.tag, pinned,
            _pin_source(comp.commit, rec, pinned),
            rec.source if rec else None, None)
        inst = installed.get(comp.name)
        row.install = _install_text(inst, checkout) if python else "no target environment given"
        row.install_ok = inst is not None and inst.points_at(checkout) and inst.versions == (comp.version,)
        seen = None
        if checkout.exists():
            row.head = gitcmd.head(runner, checkout)
            if pinned is None or row.head == pinned:
                seen = _patch_states(runner, comp, checkout, rec, row)
        else:
            row.patches = {p.name: "not fetched" for p in comp.patches}
        row.inplace = _inplace(comp.name, checkout, inv, row)
        row.needs = plan(Observed(row.head, pinned, seen, inst, checkout.resolve().as_uri()))
        rows.append(row)
    return rows


def _inplace(name: str, checkout: Path, inv: envs.Inventory | None, row: ComponentStatus) -> str:
    """Sophgo's sentinel in the checkout (its edits are then not unknown) or next to an installed copy."""
    found = inplace.in_checkout(checkout, name) if checkout.exists() else None
    if found is not None:
        inside, row.edited = inplace.explained(found, row.edited)
        return found.describe() + (f"; changed: {', '.join(inside)}" if inside else "")
    entries = next((e for n, e in (inv.dists.items() if inv else []) if inplace.import_name(n) ==
                    inplace.import_name(name)), [])
    found = inplace.in_site(entries, name)
    return found.describe() if found is not None else ""


def _patch_states(runner: Runner, comp, checkout: Path, rec, row: ComponentStatus):
    try:
        series, skipped = applicable(runner, comp, checkout, rec.source if rec else "git")
        seen = patches.observe(runner, checkout, series)
    except SdEnvError as exc:
        for path in comp.patches:
            row.patches[path.name] = f"conflict: {exc.message}"
        return None
    for patch, _missing in skipped:
        row.patches[patch.name] = NOT_APPLICABLE
    recorded = {p.name: p.sha256 for p in (rec.patches if rec else [])}
    for p in series:
        if seen.kind == "applied" and p.name in recorded and recorded[p.name] != p.sha256:
            row.patches[p.name] = APPLIED_CHANGED
        elif seen.kind == "applied":
            row.patches[p.name] = APPLIED
        elif seen.kind == "edited" and p.name in recorded:
            row.patches[p.name] = ("modified since applied" if recorded[p.name] == p.sha256
                                   else "patch file changed since applied")
        else:
            row.patches[p.name] = {"unapplied": "not applied", "partial": "half applied",
                                   "edited": "not applied"}[seen.kind]
    row.edited = list(seen.edited)
    return seen


def _pin_source(manifest_commit: str | None, rec: state.ComponentState | None,
                pinned: str | None) -> str:
    if rec is not None and rec.source == "sdist":
        return "sdist import"  # a local commit of the PyPI sdist, not an upstream commit
    if manifest_commit:
        return "manifest"
    return "recorded" if pinned else "unknown"


def _install_text(inst: target.Installed | None, checkout: Path) -> str:
    if inst is None or not inst.versions:
        return "not installed"
    versions = ", ".join(inst.versions)
    if len(inst.versions) > 1:
        return f"{len(inst.versions)} copies installed ({versions})"
    if inst.points_at(checkout):
        return f"{versions} editable -> managed checkout"
    if inst.editable:
        return f"{versions} editable -> {inst.url} (not the managed checkout)"
    return f"{versions} installed normally (not the managed checkout)"


COLUMNS = ("component", "pinned", "checkout", "patches", "install", "needs")


def cells(r: ComponentStatus) -> list[Cell]:
    """One row of the status table (report.py renders it)."""
    pin = f"{r.tag} {r.pinned[:12] if r.pinned else '?'}"
    if r.pin_source != "manifest":
        pin += f" ({r.pin_source})"
    head: Cell = f"{r.source} {r.head[:12]}" if r.head else "not fetched"
    if r.head and r.pinned and r.head != r.pinned:
        head = marked(str(head), " (drifted)")
    pats: Cell = "\n".join(f"{k}: {v}" for k, v in r.patches.items()) or "-"
    if r.edited:
        pats = Text(str(pats) + "\n") + marked("", "local edits:") + Text(" " + ", ".join(r.edited))
    if r.inplace:
        pats = Text.assemble(pats if isinstance(pats, Text) else Text(pats), "\n", (r.inplace, "yellow"))
    return [r.name, pin, head, pats, r.install, ", ".join(r.needs) or "nothing"]


def fixes(rows: list[ComponentStatus]) -> list[str]:
    """The fix for what the table shows, the same one verify and the README give."""
    lines = []
    if any(r.needs and r.head is None for r in rows):
        lines.append("not fetched yet: `sd-env install`")
    if any(r.edited for r in rows):
        lines.append("local edits: keep them (git -C CHECKOUT diff > my.diff) or discard them, then `sd-env repatch`")
    elif any(r.needs and r.head is not None for r in rows):
        lines.append("clobbered (not at the pinned, patched, editable state): `sd-env repatch` restores it")
    return lines
