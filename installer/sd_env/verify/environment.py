"""Checks 1-3 and the ulimit row: the interpreter, the pins, the sources and patches, as read from
the environment (no torch imported); and the bug-report block.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable

from sd_env import __version__
from sd_env.core import lockfile
from sd_env.patching import status
from sd_env.report import FAIL, OK, WARN
from sd_env.target import closure, envs, extras, requirements_check, trainenv
from sd_env.target import installed as target
from sd_env.verify.context import PACKAGE_FACTS, Check, Context


def environment_checks(ctx: Context, inv: envs.Inventory, rows: list[status.ComponentStatus],
                       started: Callable[[str], None], done: Callable[[Check], Check]) -> None:
    """Checks 1-3, which read the environment (the interpreter, the pins, the sources and patches)."""
    ctx.rows = rows
    done(check_interpreter(ctx, inv))
    started("pins")
    done(check_pins(ctx, inv))
    started("sources+patches")
    done(check_sources(ctx, rows))


# 1 ---------------------------------------------------------------------------
def check_interpreter(ctx: Context, inv: envs.Inventory) -> Check:
    have = ".".join(map(str, inv.python))
    ctx.facts["Python (target)"] = f"{have} ({ctx.python})"
    if ".".join(map(str, inv.python[:2])) == ctx.man.python:
        return Check("interpreter", OK, f"Python {have} at {ctx.python}")
    return Check("interpreter", FAIL, f"Python {have} at {ctx.python}, the manifest wants {ctx.man.python}: "
                 "recreate the environment (sd-env install --python /path/to/python3.9)")


# 2 ---------------------------------------------------------------------------
def check_pins(ctx: Context, inv: envs.Inventory) -> Check:
    started = time.monotonic()
    for name, inst in target.installed(inv, list(PACKAGE_FACTS)).items():
        ctx.facts[name] = ", ".join(inst.versions) or "not installed"
    problems = []
    count = 0
    if ctx.man.lock is not None:
        lock = lockfile.read(ctx.man.lock.files[lockfile.flavour_order(ctx.man)[0]])
        count = len(lock.pins)
        for name, (want, have) in sorted(closure.missing(lock, inv).items()):
            problems.append(f"{name}: locked {want}, installed {have or 'nothing'}")
    for name, entries in sorted(inv.dists.items()):
        if len(entries) > 1:
            where = ", ".join(e["path"] for e in entries)
            problems.append(f"{name}: {len(entries)} distributions shadow each other ({where})")
    broken = requirements_check.broken(inv)  # pip check's judgement, without a pip process
    if broken:
        problems.append("pip check: " + "; ".join(broken[:4]))
    seconds = time.monotonic() - started
    unlocked = extras.find(ctx.man, inv)
    extra_text = (f"{len(unlocked)} packages not in the lock: {', '.join(unlocked)} "
                  "(`sd-env install --sync` removes them)") if unlocked else ""
    if problems:
        return Check("pins", FAIL, "; ".join(problems + ([extra_text] if extra_text else []))
                     + " -> run `sd-env install` to restore the lock", seconds)
    if unlocked:
        return Check("pins", WARN, f"{count} locked packages at their versions, pip check clean; {extra_text}",
                     seconds)
    return Check("pins", OK, f"{count} locked packages at their versions, no shadowing copies, pip check clean",
                 seconds)


# 3 ---------------------------------------------------------------------------
def check_sources(ctx: Context, rows: list[status.ComponentStatus]) -> Check:
    problems, notes, good = [], [], []
    unfetched = edited = False
    for row in rows:
        if row.head is None:
            problems.append(f"{row.name}: not fetched")
            unfetched = True
            continue
        if row.pinned and row.head != row.pinned:
            problems.append(f"{row.name}: checkout at {row.head[:12]}, pinned {row.pinned[:12]}")
        # The bug-report block says what Python imports; the checkout only when that is it.
        where = "" if row.install_ok else " in the managed checkout, which is not what is installed"
        for name, state in row.patches.items():
            ctx.facts[f"patch {name}"] = state + where
            if state == status.NOT_APPLICABLE:
                notes.append(f"{name} not applicable ({row.name} from its sdist)")
            elif state == status.APPLIED_CHANGED:
                notes.append(f"{name} changed since it was applied, the checkout is what it produces "
                             "(`sd-env install` records it)")
            elif state != status.APPLIED:
                problems.append(f"{row.name}: {name} is {state}")
        if row.edited:
            problems.append(f"{row.name}: local edits in {', '.join(row.edited)}")
            edited = True
        if row.inplace:  # a known patcher, not an unknown edit: say whose, and that sd-env's patches replace it
            problems.append(f"{row.name}: {row.inplace} (sd-env's own patches do this; `sd-env install` "
                            "or `sd-env repatch` puts the managed checkout back)")
        if not row.install_ok:
            problems.append(f"{row.name}: {row.install}")
        checkout = f"{row.tag} {row.source} {row.head[:12]}"
        ctx.facts[row.name] = (f"{checkout} ({row.install})" if row.install_ok else
                               f"{row.install}; the managed checkout {checkout} is not what is installed")
        good.append(f"{row.name} {row.tag}")
    if problems:
        # One story per failure, the same in status and the README: a clobbered component is
        # repatch's job; local edits are the user's to keep or drop first; nothing fetched is install's.
        if edited:
            fix = "keep or discard the local edits first (`sd-env status` names them), then run `sd-env repatch`"
        elif unfetched:
            fix = "run `sd-env install`"
        else:
            fix = "run `sd-env repatch` to restore the pinned, patched, editable state"
        return Check("sources+patches", FAIL, "; ".join(problems) + " -> " + fix)
    detail = f"{', '.join(good)}: at the pinned commits, patches applied, editable installs -> checkouts"
    return Check("sources+patches", WARN if notes else OK, detail + ("; " + "; ".join(notes) if notes else ""))


# 5 ---------------------------------------------------------------------------
def check_ulimit(limits: tuple[int, int] | None = None) -> Check:
    """`limits`: (soft, hard), this process's when not given (the training shell inherits them)."""
    soft, hard = limits or resource.getrlimit(resource.RLIMIT_NOFILE)
    shown = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    if soft == resource.RLIM_INFINITY or soft >= trainenv.NOFILE:
        return Check("ulimit -n", OK, f"open files limit {shown} (>= {trainenv.NOFILE})")
    return Check("ulimit -n", WARN, f"open files limit {shown} < {trainenv.NOFILE}, as the tutorial requires: "
                 + trainenv.nofile_advice(hard))


def environment_block(ctx: Context) -> str:
    """A copy-and-paste block for bug reports, like `diffusers-cli env`."""
    lines = [f"- sd-env version: {__version__}", f"- Platform: {platform.platform()}",
             f"- Manifest: {ctx.man.path} ({ctx.man.name})", f"- Device: {ctx.man.device} wanted, checks ran on "
             f"{ctx.device}{' (emulated)' if ctx.emulated else ''}"]
    lines += [f"- {k}: {v}" for k, v in ctx.facts.items()]
    return "\n".join(lines)
