"""`sd-env install`: bring every component to its pinned, patched, editable state.

Observe, plan, act: each component is observed (checkout, patch series,
target install), `plan.plan` says what is missing, and only that runs. A
finished environment plans nothing, so a re-run makes no network call and
no pip call.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sd_env.bundle import install as bundle_install
from sd_env.bundle import trust as bundle_trust
from sd_env.core import lockfile, manifest, state
from sd_env.core.manifest import Component, Manifest
from sd_env.errors import InputError, SdEnvError, StepError
from sd_env.patching import patches, sdist_to_git, sources
from sd_env.patching.checkouts import APPLIED_DIR, applicable, pinned_commit, record_applied
from sd_env.patching.plan import BUILD, CHECKOUT, FETCH, PATCH, RESTORE, Observed, plan
from sd_env.report import FAIL, OK, SKIPPED, WARN, Result, progress
from sd_env.system import faults, gitcmd
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import closure, envs, torchtpu, wheeltags
from sd_env.target import installed as target


@dataclass(frozen=True)
class Options:
    python: Path
    mirror: str | None = None
    sdist_fallback: bool = True
    index_url: str | None = None  # for the lock install; pip also reads its own config
    torch_tpu_wheel: str | None = None  # overrides the manifest's wheel location
    use_uv: bool = True
    bundle: bundle_trust.Checked | None = None  # hook (bundle_install): a checked offline bundle is the only source
    inventory: envs.Inventory | None = None  # the target as envs.resolve read it (else read here)


class LocalEdits(StepError):
    pass


# The component steps that write, when they succeed (an sdist swapped for git is a "fetch").
WRITES = (FETCH, RESTORE, PATCH, BUILD)


def _skipped_notes(comp: Component, skipped: list[tuple[patches.Patch, list[str]]]) -> list[Result]:
    return [Result(comp.name, "patch", WARN, f"{patch.name}: not applicable to this source "
                   f"({', '.join(missing)} absent from the sdist); NOT applied") for patch, missing in skipped]


@dataclass
class Outcome:
    results: list[Result]
    error: SdEnvError | None = None  # the error that stopped the run, if any
    # Whether anything was written to the target or a checkout (a fleet tool counts this as
    # "changed"; a re-run of a finished install says False).
    changed: bool = False


def run(manifest: Manifest, paths: Paths, runner: Runner, opts: Options) -> Outcome:
    """Environment, lock, components, torch_tpu, in that order; stop at the first failure."""
    record = state.load(paths.state)
    for comp in manifest.components:
        for path in comp.patches:
            patches.load(path)  # a patch that is no diff, or leaves the tree, fails before anything is written
    outcome = Outcome([])
    where = "env"
    try:
        inv = opts.inventory or envs.inventory(runner, opts.python)
        torchtpu.refuse_installed_google(inv)
        where = "torch_tpu"
        _wheel_fits(manifest, paths, runner, opts)  # a wheel for another Python or torch: refused before any install
        where = "env"
        changed = False
        if manifest.lock is not None:
            result, changed = _closure(manifest, paths, runner, opts, inv)
            outcome.results.append(result)
            faults.point("lock-installed")
        # The lock holds no component, so this inventory still tells how each one is installed.
        installed = target.installed(inv, [c.name for c in manifest.components])
        built = []
        outcome.changed = changed
        for comp in manifest.components:
            where = comp.name
            done = _component(comp, paths, runner, opts, record, installed.get(comp.name))
            outcome.results += done
            built += [comp.name for r in done if r.step == BUILD]
            outcome.changed |= any(r.step in WRITES and r.status == OK for r in done)
        where = "env"
        if built:
            _confirm_builds(paths, runner, opts, built)
        where = "torch_tpu"
        tpu, tpu_changed = _torch_tpu(manifest, paths, runner, opts, record, inv)
        outcome.results.append(tpu)
        outcome.changed |= tpu_changed
        if changed or built or tpu_changed:
            outcome.results.append(_pip_check(runner, opts.python))
        if opts.bundle is not None:  # hook: the model and data a bundle carries, into the Hub cache
            where = "model"
            outcome.results += bundle_install.place_models(opts.bundle, paths.work)
            anchor = opts.bundle.anchor
            record.bundle = state.BundleRecord(anchor.id, str(opts.bundle.root), state.utc_now(), anchor.how)
    except SdEnvError as exc:
        outcome.results.append(Result(where, "error", FAIL, exc.message.splitlines()[0]))
        outcome.error = exc
    finally:
        state.save(record, paths.state)
        shutil.rmtree(paths.work, ignore_errors=True)
    return outcome


def _closure(man: Manifest, paths: Paths, runner: Runner, opts: Options,
             inv: envs.Inventory) -> tuple[Result, bool]:
    """Install whatever of the lock is missing or at another version; nothing when all is there.
    Also says whether anything was installed."""
    assert man.lock is not None
    started = time.monotonic()
    flavour = lockfile.flavour_order(man)[0]
    lock = lockfile.read(man.lock.files[flavour])
    if torchtpu.NAME in lock.pins:
        raise StepError(f"{lock.path} pins torch-tpu from the index", torchtpu.COLLISION
                        + "; remove it from the lock: Sophgo's wheel is installed from [torch_tpu]")
    wrong = closure.missing(lock, inv)
    if not wrong:
        return Result("env", "lock", OK, f"all {len(lock.pins)} locked packages present ({flavour} flavour)"), False
    if flavour == "pypi":
        torch = lock.pins.get("torch", "")
        progress(f"WARNING: using the PyPI flavour of the lock: PyPI's torch {torch} for Linux is the CUDA "
                 "build (several GB more with its nvidia-* packages); the CPU build needs a lock of the "
                 "\"cpu\" flavour (`sd-env lock --flavour cpu` where the PyTorch CPU index is reachable)")
    progress(f"installing {len(wrong)} of {len(lock.pins)} locked packages (hash-checked, no resolution)")
    if opts.bundle is not None:  # hook: sd-env install --bundle
        tool = bundle_install.install_lock(runner, opts.python, opts.bundle, paths.work, use_uv=opts.use_uv)
    else:
        tool = closure.install(runner, opts.python, lock, index=opts.index_url, use_uv=opts.use_uv)
    shown = ", ".join(f"{n}=={v[0]}" for n, v in sorted(wrong.items())[:4])
    more = f" and {len(wrong) - 4} more" if len(wrong) > 4 else ""
    return Result("env", "lock", OK, f"installed {len(wrong)} packages with {tool} ({flavour} flavour): "
                  f"{shown}{more}", time.monotonic() - started), True


def _wheel_fits(man: Manifest, paths: Paths, runner: Runner, opts: Options) -> None:
    location = opts.torch_tpu_wheel or (man.torch_tpu.location if man.torch_tpu else None)
    path = torchtpu.local_wheel(runner, location, paths.wheels) if location else None
    if path is None and opts.torch_tpu_wheel:
        # A path the user gave is a typo or a missing file, not a CPU-only choice (the manifest's
        # default path, absent, is that choice: a warn row below).
        raise InputError(f"no torch_tpu wheel at {opts.torch_tpu_wheel}: no such file (given with "
                         "--torch-tpu-wheel, $SD_ENV_TORCH_TPU_WHEEL or a config file: `sd-env config` says which)",
                         "fix the path; nothing was installed")
    if path is not None:
        wheeltags.check_fit(man, path)


def _torch_tpu(man: Manifest, paths: Paths, runner: Runner, opts: Options, record: state.State,
               inv: envs.Inventory) -> tuple[Result, bool]:
    """Sophgo's wheel when there is one; also says whether it was installed now."""
    started = time.monotonic()
    location = opts.torch_tpu_wheel or (man.torch_tpu.location if man.torch_tpu else None)
    if not location:
        return Result("torch_tpu", "wheel", SKIPPED, "no torch_tpu wheel in the manifest: CPU-only environment"), False
    spec = man.torch_tpu or manifest.WheelSpec(location, None)
    path = torchtpu.local_wheel(runner, location, paths.wheels)
    if path is None:
        return Result("torch_tpu", "wheel", WARN,
                      f"no wheel at {location}: the environment is CPU-only. Get "
                      f"{Path(location).name} from {torchtpu.SOPHGO_RELEASES}, put it there "
                      "(or pass --torch-tpu-wheel PATH) and run `sd-env install` again"), False
    wheel = opts.bundle.index.torch_tpu if opts.bundle is not None else None
    if opts.bundle is not None and wheel and path == opts.bundle.root / wheel:  # what is hashed is what installs
        path = bundle_install.private_copy(opts.bundle, wheel, paths.work)
    digest, meta = torchtpu.check_wheel(spec, path)
    version = meta["version"]
    have = target.installed(inv, [torchtpu.NAME])[torchtpu.NAME].versions
    if have == (version,) and record.wheels.get(path.name) == digest:
        return Result("torch_tpu", "wheel", OK, f"torch_tpu {version} already installed from {path.name}"), False
    progress(f"installing torch_tpu {version} from {path}")
    if opts.bundle is not None:  # hook: sd-env install --bundle
        bundle_install.install_file(runner, opts.python, path, use_uv=opts.use_uv)
    else:
        closure.install_file(runner, opts.python, path, use_uv=opts.use_uv)
    first = path.name not in record.wheels and not spec.sha256
    record.wheels[path.name] = digest
    note = f"; recorded sha256 {digest} (add it to the manifest's [torch_tpu] to pin it)" if first else ""
    return Result("torch_tpu", "wheel", OK, f"installed torch_tpu {version} from {path.name}{note}",
                  time.monotonic() - started), True


def _pip_check(runner: Runner, python: Path) -> Result:
    got = runner.run([str(python), "-m", "pip", "check"], check=False, timeout=300, label="pip check")
    text = (got.stdout + got.stderr).strip()
    if got.returncode == 0:
        return Result("env", "pip check", OK, text.splitlines()[-1] if text else "no broken requirements")
    return Result("env", "pip check", WARN, "; ".join(text.splitlines()[:3]))


def _component(comp: Component, paths: Paths, runner: Runner, opts: Options,
               record: state.State, inst: target.Installed | None) -> list[Result]:
    checkout = paths.checkout(comp.name)
    rec = record.components.get(comp.name)
    if checkout.exists() and rec is None:
        rec = _adopt(runner, comp, checkout)
        record.components[comp.name] = rec
    notes: list[Result] = []
    # Only where the mirror may hold it: a re-run with a mirror that lacks it (transformers is
    # too large for ours) must stay a no-op, not a failed fetch each time.
    if rec is not None and rec.source == "sdist" and opts.mirror and checkout.exists() \
            and not sources.mirror_lacks(comp.git, opts.mirror):
        rec, swapped = sdist_to_git.swap(comp, paths, runner, opts.mirror, rec,
                                         applicable(runner, comp, checkout, "sdist")[0])
        record.components[comp.name] = rec
        notes.append(swapped)
    head = gitcmd.head(runner, checkout) if checkout.exists() else None
    pinned = pinned_commit(comp, rec)
    series: list[patches.Patch] | None = None
    seen = None
    if head is not None and (pinned is None or head == pinned):
        series, skipped = applicable(runner, comp, checkout, rec.source if rec else "git")
        notes += _skipped_notes(comp, skipped)
        seen = _observe(runner, comp, checkout, series, rec)
        if seen.kind == "applied" and rec is not None and head is not None:
            notes += _record_changed(comp, checkout, series, rec, head)
    obs = Observed(head, pinned, seen, inst, checkout.resolve().as_uri())
    steps = plan(obs)
    if not steps:
        return [*notes, Result(comp.name, "install", OK, f"up to date at {_short(head)}")]

    results: list[Result] = []
    for step in steps:
        started = time.monotonic()
        if step == FETCH:
            detail, rec = _fetch(comp, paths, runner, opts, pinned)
            record.components[comp.name] = rec
            series, skipped = applicable(runner, comp, checkout, rec.source)
            notes = _skipped_notes(comp, skipped)
        elif step == CHECKOUT:
            raise StepError(
                f"{comp.name}: the checkout is at {_short(head)}, the manifest pins {_short(pinned)}",
                "moving a component to another commit is `sd-env repatch`'s job; run it")
        elif step == RESTORE:
            assert seen is not None
            progress(f"restoring {len(seen.changed)} half-patched files of {comp.name} "
                     "(an interrupted run?)")
            patches.restore(runner, checkout, list(seen.changed))
            detail = f"restored {', '.join(seen.changed)} to {_short(head)} before re-applying"
        elif step == PATCH:
            assert series is not None
            results += notes
            notes = []
            if not series:
                continue  # nothing this source can take; the notes say why
            detail = _patch(comp, checkout, runner, series, record.components[comp.name])
        else:
            progress(f"installing {comp.name} (editable, no dependencies)")
            target.install_editable(runner, opts.python, checkout)
            faults.point("built")
            detail = f"editable install of {checkout}"
        results.append(Result(comp.name, step, OK, detail, time.monotonic() - started))
    return results + notes


def _short(commit: str | None) -> str:
    return commit[:12] if commit else "?"


def _observe(runner: Runner, comp: Component, checkout: Path, series: list[patches.Patch],
             rec: state.ComponentState | None) -> patches.SeriesState:
    seen = patches.observe(runner, checkout, series)
    if seen.kind != "edited":
        return seen
    # The patch files may have changed since they were applied: if the tree is
    # exactly the previously applied series, put those files back and re-plan.
    old = sorted((checkout / APPLIED_DIR).glob("*"))
    if old and rec is not None and rec.patches:
        old_series = [patches.load(p) for p in old]
        try:
            before = patches.observe(runner, checkout, old_series)
        except SdEnvError:
            before = None
        if before is not None and before.kind == "applied":
            progress(f"{comp.name}: the patch files changed since they were applied; "
                     "reverting the old series")
            patches.restore(runner, checkout, list(before.changed))
            rec.patches = []
            return patches.observe(runner, checkout, series)
    raise LocalEdits(
        f"{comp.name}: {checkout} has local edits in {', '.join(seen.edited)}",
        f"sd-env will not overwrite them. Keep them with `git -C {checkout} diff > my-edits.diff`, "
        f"then discard with `git -C {checkout} checkout -- . && git -C {checkout} clean -fd` "
        "and run again (or add the diff to the manifest's patches)")


def _record_changed(comp: Component, checkout: Path, series: list[patches.Patch], rec: state.ComponentState,
                    head: str) -> list[Result]:
    """The series is applied but the record names other files (a header-only edit of a patch file, or
    a lost record): the checkout already is what the files produce, so only the record changes."""
    if [(p.name, p.sha256) for p in rec.patches] == [(p.name, p.sha256) for p in series]:
        return []
    why = "the patch file changed since it was applied" if rec.patches else "no record of it was left"
    record_applied(checkout, series, rec, head)
    return [Result(comp.name, PATCH, OK, f"recorded {', '.join(p.name for p in series)} ({why}; the checkout is "
                   "already what it produces)")]


def _adopt(runner: Runner, comp: Component, checkout: Path) -> state.ComponentState:
    """A checkout without a state record (the record was deleted): derive what it is."""
    head = gitcmd.head(runner, checkout)
    ref = gitcmd.git(runner, checkout, "rev-parse", "-q", "--verify",
                     f"refs/tags/{comp.tag}^{{commit}}", check=False).stdout.strip()
    if ref:
        return state.ComponentState("git", comp.tag, ref, recorded_commit=comp.commit is None, version=comp.version)
    return state.ComponentState("sdist", comp.tag, head, version=comp.version)


def _fetch(comp: Component, paths: Paths, runner: Runner, opts: Options,
           pinned: str | None) -> tuple[str, state.ComponentState]:
    if opts.bundle is not None:  # hook: sd-env install --bundle
        return bundle_install.fetch_component(comp, paths, runner, opts.bundle, pinned)
    checkout = paths.checkout(comp.name)
    url = sources.mirror_url(comp.git, opts.mirror)
    progress(f"cloning {comp.name} {comp.tag}" + (f" from mirror {url}" if url != comp.git else ""))
    got = sources.fetch(comp, checkout, paths.work, runner, mirror=opts.mirror, expect=pinned,
                        python=opts.python, sdist_fallback=opts.sdist_fallback)
    if got.source == "sdist":
        rec = state.ComponentState("sdist", comp.tag, got.commit, sdist_sha256=got.sdist_sha256,
                                   version=comp.version)
        return f"PyPI sdist {got.url} (sha256 {_short(got.sdist_sha256)}), git unreachable", rec
    recorded = comp.commit is None
    if recorded:
        progress(f"recorded {comp.name} {comp.tag} -> {got.commit} (add commit = \"{got.commit}\" "
                 "to the manifest to pin it)")
    rec = state.ComponentState("git", comp.tag, got.commit, recorded_commit=recorded, version=comp.version)
    verb = "recorded" if recorded else "verified"
    return f"git {comp.tag} at {got.commit[:12]} ({verb})", rec


def _patch(comp: Component, checkout: Path, runner: Runner, series: list[patches.Patch],
           rec: state.ComponentState) -> str:
    progress(f"patching {comp.name}: {', '.join(p.name for p in series)}")
    patches.apply(runner, checkout, series)
    faults.point("patched")
    record_applied(checkout, series, rec, gitcmd.head(runner, checkout))
    return "applied " + ", ".join(f"{p.name} (sha256 {p.sha256[:12]})" for p in series)


def _confirm_builds(paths: Paths, runner: Runner, opts: Options, built: list[str]) -> None:
    after = target.installed(envs.inventory(runner, opts.python), built)
    for name in built:
        checkout = paths.checkout(name)
        inst = after[name]
        if not inst.points_at(checkout) or len(inst.versions) != 1:
            raise StepError(
                f"{name}: after the editable install the target sees {list(inst.versions)} "
                f"from {inst.url}, not one editable install of {checkout}",
                "look for a second copy (a stray .egg-info or an earlier non-editable install)")
