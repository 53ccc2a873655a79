"""`sd-env repatch`: restore clobbered components, or port their patches to a new release.

Porting happens in a work tree under `<home>/repatch/`, never in the managed
checkout or the target environment, so a conflict or an interrupted run leaves
everything installed exactly as it was. A session file remembers where a port
stopped, for `--continue` and `--abort`. Finishing (patch files, manifest,
checkout swap, editable rebuild) is ordered so each step can be redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sd_env.core import state
from sd_env.core.manifest import Component, Manifest
from sd_env.errors import InputError, SdEnvError, StepError
from sd_env.patching import ladder, patches, port, sources, status
from sd_env.patching.checkouts import record_applied
from sd_env.report import FAIL, OK, WARN, Result, progress
from sd_env.system import faults, fsutil, gitcmd
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import installed as target
from sd_env.verify import proof
from sd_env.workflows import refresh
from sd_env.workflows.install import Options
from sd_env.workflows.install import run as install_run

SESSION_VERSION = 1


class RepatchConflict(StepError):
    """A patch did not port; the work tree waits for the user. Carries the results so far."""

    def __init__(self, message: str, hint: str = "", results: list[Result] | None = None) -> None:
        super().__init__(message, hint)
        self.results = results or []


@dataclass
class Session:
    component: str
    from_tag: str
    from_version: str
    to_tag: str
    to_version: str
    to_commit: str
    source: str
    work: str
    base: str  # the new upstream commit the ports sit on
    patch_files: list[str]  # the original series, in order
    done: list[dict]  # per ported patch: name, method, detail, commit (in the work tree)
    phase: str = "porting"  # "porting" | "finishing"
    sdist_sha256: str | None = None
    fuzz: int = 0  # --fuzz of the start, kept for the patches ported after a --continue
    fuzzed: str = ""  # detail of the stopped patch's fuzzed port, waiting for --continue --accept
    start: str = ""  # the file the current patch's port started from (a nearer rung), when not the patch


def session_path(paths: Paths) -> Path:
    return paths.session


def load_session(paths: Paths) -> Session | None:
    path = session_path(paths)
    fix = (f"move {path.parent} aside (the port in progress is lost), then `sd-env repatch` "
           "restores the pinned state")
    data = state.read_record(path, SESSION_VERSION, "repatch session", fix)
    if data is None:
        return None
    data.pop("version", None)
    try:
        return Session(**data)
    except TypeError as exc:
        raise InputError(f"{path}: the repatch session is corrupt ({exc})", fix) from None


def save_session(paths: Paths, session: Session) -> None:
    text = json.dumps({"version": SESSION_VERSION, **dataclasses.asdict(session)}, indent=2)
    fsutil.write_atomic(session_path(paths), text + "\n")


def pending_upgrades(man: Manifest, paths: Paths) -> list[tuple[str, str]]:
    """Components whose manifest entry moved to another release than their checkout holds."""
    record = state.load(paths.state)
    return [(c.name, c.version) for c in man.components
            if c.name in record.components and paths.checkout(c.name).exists()
            and record.components[c.name].tag != c.tag]


def restore(man: Manifest, paths: Paths, runner: Runner, opts: Options) -> tuple[list[Result], SdEnvError | None]:
    """The clobbered case: say what drifted, then bring everything back (install is idempotent)."""
    found = []
    for row in status.collect(man, paths, runner, opts.python):
        problems = [f"{name}: {st}" for name, st in row.patches.items()
                    if st not in (status.APPLIED, status.NOT_APPLICABLE)]
        if not row.install_ok:
            problems.append(f"install: {row.install}")
        if row.edited:
            problems.append("local edits in " + ", ".join(row.edited))
        found.append(Result(row.name, "found", WARN if problems else OK, "; ".join(problems) or "as pinned"))
    outcome = install_run(man, paths, runner, opts)
    return found + outcome.results, outcome.error


def start(man: Manifest, paths: Paths, runner: Runner, opts: Options, name: str, version: str,
          fuzz: int = 0, accept: bool = False) -> list[Result]:
    if load_session(paths) is not None:
        raise InputError("a repatch is already in progress", "finish it with `sd-env repatch --continue`, "
                         "or drop it with `sd-env repatch --abort`")
    comp = _component(man, name)
    rec = state.load(paths.state).components.get(name)
    from_version = (rec.version if rec and rec.version else comp.version)
    from_tag = rec.tag if rec else comp.tag
    to_tag = _tag_for(comp, version)
    if version == from_version and not (rec and rec.tag != comp.tag):
        raise InputError(f"{name} is already at {version}", "to restore it, run `sd-env repatch` without --to")
    work = paths.port_work(name, version)
    shutil.rmtree(work, ignore_errors=True)
    new = dataclasses.replace(comp, tag=to_tag, version=version, commit=None)
    progress(f"fetching {name} {to_tag} into {work}")
    got = sources.fetch(new, work, paths.work, runner, mirror=opts.mirror, expect=None, python=opts.python,
                        sdist_fallback=opts.sdist_fallback)
    session = Session(name, from_tag, from_version, to_tag, version, got.commit, got.source, str(work), got.commit,
                      [str(p) for p in comp.patches], [], sdist_sha256=got.sdist_sha256, fuzz=fuzz)
    faults.point("repatch-fetched")
    save_session(paths, session)
    return _port_all(man, paths, runner, opts, session, fuzz, accept)


def resume(man: Manifest, paths: Paths, runner: Runner, opts: Options, accept: bool = False) -> list[Result]:
    """--continue: take the user's resolution of the stopped patch, then go on."""
    session = _session(paths)
    work = Path(session.work)
    if session.phase == "porting":
        index = len(session.done)
        patch = patches.load(Path(session.start or session.patch_files[index]))
        leftovers = [str(p.relative_to(work)) for p in work.rglob("*.rej")] + \
            [str(p.relative_to(work)) for p in work.rglob("*.orig")]
        if leftovers:
            raise RepatchConflict(f"{', '.join(leftovers)} still in {work}",
                                  "resolve the rejected hunks by hand, delete the .rej/.orig files, then --continue")
        gitcmd.git(runner, work, "add", "-A")
        changed = gitcmd.out(runner, work, "diff", "--cached", "--name-only", "HEAD").split()
        if not changed:
            raise RepatchConflict(f"no changes in {work}: {patch.name} would be empty",
                                  "apply the patch's intent by hand, or --abort")
        problems = [p for c in changed if (work / c).is_file() for p in port.check_file(work / c, c)]
        missing = port.verify_port(work, patch)
        if problems or (missing and not accept):
            raise RepatchConflict(f"{patch.name}: " + "; ".join(problems or missing),
                                  "fix the work tree and --continue" + ("" if problems else
                                  " (or --continue --accept if the missing lines were changed on purpose)"))
        if session.fuzzed and not accept:
            # A fuzzed port is accepted only by saying so, even when the tree was left as fuzz made it.
            raise RepatchConflict(f"{patch.name}: {session.fuzzed}; a fuzzed port needs --accept",
                                  f"review the change in {work}, then `sd-env repatch --continue --accept`")
        method, detail = ((port.FUZZED, session.fuzzed.split(":")[0] + ", accepted with --accept") if session.fuzzed
                          else ("manual", "resolved by hand in the work tree"))
        _commit(runner, work, f"{patch.name} ({method})")
        session.done.append({"name": patch.name, "path": str(patch.path), "method": method,
                             "detail": detail, "commit": gitcmd.head(runner, work)})
        session.fuzzed = session.start = ""
        save_session(paths, session)
    return _port_all(man, paths, runner, opts, session, session.fuzz, accept)


def abort(paths: Paths) -> Result:
    session = _session(paths)
    if session.phase == "finishing":
        # Patch files, manifest and checkout may already be switched: only finishing leaves them consistent.
        raise InputError(f"the port of {session.component} to {session.to_version} is done and was being "
                         "installed when it stopped; it cannot be aborted",
                         "run `sd-env repatch` to finish it (then `sd-env repatch --to` back, if need be)")
    shutil.rmtree(session.work, ignore_errors=True)
    session_path(paths).unlink()
    return Result(session.component, "abort", OK, f"removed {session.work}; nothing else had changed")


def _port_all(man: Manifest, paths: Paths, runner: Runner, opts: Options, session: Session, fuzz: int,
              accept: bool) -> list[Result]:
    work = Path(session.work)
    old_checkout = paths.checkout(session.component)
    comp = _component(man, session.component)
    results = [Result(session.component, "port", OK, f"{d['name']}: {d['method']} ({d['detail']})")
               for d in session.done]
    while session.phase == "porting" and len(session.done) < len(session.patch_files):
        patch = patches.load(Path(session.patch_files[len(session.done)]))
        progress(f"porting {patch.name} to {session.component} {session.to_tag}")
        choice = ladder.choose(runner, work, patch, session.from_version, session.to_version,
                               lambda p: _plain_port(paths, runner, opts, comp, session, work, p, old_checkout,
                                                     fuzz, accept))
        got = choice.result
        if got.method == port.GONE:
            got = _settle_gone(man, runner, opts, paths, session, work, got)
        started = ""
        if choice.start != patch.path and got.method != port.SHIPPED:
            started = f"started from {choice.start.name}, the nearest shipped port below {session.to_version}; "
            progress(f"{patch.name}: {started.rstrip('; ')}")
        session.start = str(choice.start) if choice.start != patch.path else ""
        if got.method == port.SHIPPED:
            session.fuzzed = ""
        if got.method == port.CONFLICT:
            where = "\n  ".join(got.conflicts) or "see the files in the work tree"
            save_session(paths, session)
            results.append(Result(session.component, "port", FAIL, f"{patch.name}: {started}{got.detail}"))
            raise RepatchConflict(
                f"{got.patch.name} does not port to {session.component} {session.to_tag}: {started}{got.detail}"
                f"\n  {where}",
                f"nothing installed changed. Fix it in {work} (conflict markers or .rej files), then "
                "`sd-env repatch --continue`; or `sd-env repatch --abort`", results)
        commit = ""
        if got.ported:
            commit = _commit(runner, work, f"{patch.name} ({got.method})")
            faults.point("ported")
        session.done.append({"name": got.patch.name, "path": str(got.patch.path), "method": got.method,
                             "detail": started + got.detail, "commit": commit, "shipped": got.method == port.SHIPPED,
                             "dropped": got.gone if got.method == port.DROPPED else []})
        session.start = ""
        save_session(paths, session)
        status_ = WARN if got.method in (port.OBSOLETE, port.FUZZED) else OK
        results.append(Result(session.component, "port", status_,
                              f"{patch.name}: {got.method} ({started}{got.detail})"))
    # Everything that can refuse (a patch that does not parse, a manifest that cannot be edited) is
    # checked while --abort is still possible; finishing only writes what was checked.
    outputs = refresh.outputs(man.path, _component(man, session.component), runner, session)
    session.phase = "finishing"
    save_session(paths, session)
    faults.point("finishing")
    finished = _finish(man, paths, runner, opts, session, outputs)
    return results + finished + proof.after_port(runner, opts.python, paths, session.component, man)


def _plain_port(paths: Paths, runner: Runner, opts: Options, comp: Component, session: Session, work: Path,
                patch: patches.Patch, old_checkout: Path, fuzz: int, accept: bool) -> port.PortResult:
    blobs = old_checkout if old_checkout.exists() else None
    if port.ensure_blobs(runner, work, patch, blobs):
        _pre_image(paths, runner, opts, comp, session, work, patch)
    got = port.port(runner, work, patch, blobs_from=blobs, fuzz=fuzz)
    if got.method == port.FUZZED and not accept:
        session.fuzzed = got.detail
        save_session(paths, session)
        got = port.PortResult(patch, port.CONFLICT, got.detail + " (fuzzed ports need --continue --accept)")
    return got


def _settle_gone(man: Manifest, runner: Runner, opts: Options, paths: Paths, session: Session, work: Path,
                 got: port.PortResult) -> port.PortResult:
    """Hunks whose target text is gone, the rest ported into the work tree: dropped when the component's
    proof shows they are no longer needed, else a conflict that says whether they still are."""
    verdict, evidence = proof.gone_hunks(runner, opts.python, paths, session.component, work, man)
    shutil.rmtree(work / ".git" / "sd-env-rest", ignore_errors=True)
    gone = "; ".join(got.gone) + ": target text gone from the new file"
    if verdict == proof.OBSOLETE:
        return port.PortResult(got.patch, port.DROPPED, f"{gone}; dropped: no longer needed (proven on the emulated "
                               f"device: {evidence}); {got.detail}", gone=got.gone)
    for hunk in got.gone:  # the user's to-do in the work tree, as a plain conflict leaves it
        path = hunk.split(" of ", 1)[1].rsplit(" (`", 1)[0]
        with open(work / f"{path}.rej", "a", encoding="utf-8") as rej:
            rej.write(f"sd-env: {hunk}: target text gone from the new file\n")
    why = (f"still needed (proven on the emulated device: {evidence})" if verdict == proof.NEEDED
           else f"not proven obsolete ({evidence})")
    return port.PortResult(got.patch, port.CONFLICT, f"{gone}, {why}; {got.detail}, in the work tree: write "
                           "the fix for the new code by hand", gone=got.gone)


def _pre_image(paths: Paths, runner: Runner, opts: Options, comp: Component, session: Session, work: Path,
               patch: patches.Patch) -> None:
    """Copy `patch`'s pre-image blobs into the work tree from the release it was made for (in its
    name), fetched for this: a shipped port of another release than the checkout's can then be
    merged 3-way. Nothing when that release cannot be fetched (the port says the blobs are missing)."""
    version = ladder.version_in_name(patch.name, session.from_version)
    if not version or version in (session.from_version, session.to_version):
        return
    rung = dataclasses.replace(comp, tag=_tag_for(comp, version), version=version, commit=None)
    where = paths.work / f"pre-image-{session.component}-{version}"
    shutil.rmtree(where, ignore_errors=True)
    progress(f"fetching {session.component} {rung.tag} for the pre-image of {patch.name}")
    try:
        sources.fetch(rung, where, paths.work, runner, mirror=opts.mirror, expect=None, python=opts.python,
                      sdist_fallback=opts.sdist_fallback)
        port.ensure_blobs(runner, work, patch, where)
    except SdEnvError as exc:
        progress(f"{patch.name}: no pre-image to merge from ({exc.message.splitlines()[0]})")
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _finish(man: Manifest, paths: Paths, runner: Runner, opts: Options, session: Session,
            outputs: refresh.Outputs | None = None) -> list[Result]:
    """Write the refreshed patches, point the manifest at them, swap the checkout, rebuild.
    `outputs`: what _outputs gave just before (a resumed finish works them out again)."""
    comp = _component(man, session.component)
    work = Path(session.work)
    files, written, manifest_text = outputs or refresh.outputs(man.path, comp, runner, session)
    for path, text in files:
        fsutil.write_atomic(path, text)
    faults.point("patches-written")
    if manifest_text != man.path.read_text(encoding="utf-8"):
        fsutil.write_atomic(man.path, manifest_text)  # checked by _outputs, before finishing began
    faults.point("manifest-written")
    checkout = paths.checkout(comp.name)
    old_checkout = paths.old_checkout(comp.name)
    if work.exists():
        # The managed checkout holds the upstream commit with the series applied, uncommitted.
        gitcmd.git(runner, work, "reset", "-q", "--soft", session.base)
        gitcmd.git(runner, work, "reset", "-q")
        shutil.rmtree(old_checkout, ignore_errors=True)
        if checkout.exists():
            os.replace(checkout, old_checkout)
        os.replace(work, checkout)
        faults.point("swapped")
    record = state.load(paths.state)
    rec = record.components[comp.name] = state.ComponentState(
        session.source, session.to_tag, session.base, recorded_commit=session.source == "git",
        sdist_sha256=session.sdist_sha256, version=session.to_version)
    record_applied(checkout, [patches.load(p) for p in written], rec, session.base)
    state.save(record, paths.state)
    progress(f"installing {comp.name} {session.to_version} (editable, no dependencies)")
    target.install_editable(runner, opts.python, checkout)
    faults.point("repatch-built")
    shutil.rmtree(old_checkout, ignore_errors=True)
    session_path(paths).unlink(missing_ok=True)
    shown = ", ".join(p.name for p in written) or "no patches left (all obsolete upstream)"
    return [Result(comp.name, "finish", OK, f"now {session.to_tag} at {session.base[:12]} ({session.source}); "
                   f"wrote {shown}; manifest updated; editable install rebuilt")]


def _commit(runner: Runner, work: Path, message: str) -> str:
    gitcmd.git(runner, work, "add", "-A")
    gitcmd.git(runner, work, "commit", "-q", "--no-verify", "--allow-empty", "-m", f"sd-env: {message}",
               env=gitcmd.IDENTITY)
    return gitcmd.head(runner, work)


def _tag_for(comp: Component, version: str) -> str:
    if comp.version not in comp.tag:
        raise InputError(f"cannot derive the tag of {comp.name} {version} from {comp.tag!r}",
                         "edit the manifest's tag and version, then run `sd-env repatch`")
    return comp.tag.replace(comp.version, version, 1)


def _component(man: Manifest, name: str) -> Component:
    try:
        return man.component(name)
    except KeyError:
        raise InputError(f"no component {name!r} in {man.path}",
                         "use one of: " + ", ".join(c.name for c in man.components)) from None


def _session(paths: Paths) -> Session:
    session = load_session(paths)
    if session is None:
        raise InputError("no repatch in progress", "start one with `sd-env repatch --to NAME==VERSION`")
    return session
