"""`sd-env model lock` and `sd-env model fetch`: the manifest's model (and dataset) pinned by hash.

`lock` asks the Hub's API through the target's huggingface_hub (probes/hub_lock.py), chooses
the files a pipeline needs (hublock.py) and writes the lock beside the manifest. `fetch`
downloads exactly the locked files at the locked commit through the target's huggingface_hub
(probes/hub_fetch.py: resumable, with progress, HF_ENDPOINT's mirror if set), then checks each
against the lock's size and sha256 before it becomes a blob of the Hub cache (hubcache.py). A
second fetch finds every file in place and fetches nothing; a file that differs from its hash
is removed and named, never placed. `pinned` gives `train` the checked snapshot folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from sd_env.core import hublock, state
from sd_env.core.hubcache import Snapshot, hub_cache
from sd_env.core.hublock import HubLock, Listed, LockedRepo
from sd_env.core.manifest import HubRepo, Manifest
from sd_env.errors import InputError, StepError
from sd_env.report import OK, Result, human, progress
from sd_env.system import fsutil, probe
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner

HINTS = {
    "revision": "pin a commit the repository has (its history on the Hub); a mirror may lag behind the Hub",
    "repo": "check the repo id; for a private or gated repository export HF_TOKEN with a token that has access",
    "offline": "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) for this command",
}
NETWORK_HINT = ("the Hub or a mirror must be reachable: export HF_ENDPOINT=https://MIRROR (e.g. hf-mirror.com) "
                "and, for a private repository, HF_TOKEN; on a machine with no network, install from a bundle made "
                "with `bundle create --with-model`")


def hub_env() -> dict[str, str]:
    """The caller's environment for a Hub probe. HF_TOKEN is what current tools read; huggingface_hub 0.16
    (the default stack's) reads HUGGING_FACE_HUB_TOKEN: a token given either way reaches it."""
    env = dict(os.environ)
    if env.get("HF_TOKEN") and not env.get("HUGGING_FACE_HUB_TOKEN"):
        env["HUGGING_FACE_HUB_TOKEN"] = env["HF_TOKEN"]
    return env


def specs(man: Manifest, which: str = "all") -> list[HubRepo]:
    found = [s for s in (man.model, man.dataset) if s is not None and which in ("all", s.kind)]
    if not found:
        what = "[model] or [dataset]" if which == "all" else f"[{which}]"
        raise InputError(f"{man.path} names no {what}", f"add a {what} table: repo = \"OWNER/NAME\", revision = "
                         "\"COMMIT\" (see manifests/sc7-sd14-lora.toml)")
    return found


def lock(man: Manifest, paths: Paths, runner: Runner, python: Path) -> tuple[HubLock, list[Result]]:
    """Resolve every repository the manifest names and write the lock beside it."""
    results, locked = [], {}
    for spec in specs(man):
        started = time.monotonic()
        scratch = paths.work / "hub-lock"
        shutil.rmtree(scratch, ignore_errors=True)
        progress(f"asking the Hub for {spec.kind} {spec.repo} at {spec.revision[:12]} (its file listing)")
        try:
            got = probe.run(runner, python, probe.script("hub_lock.py"), [
                "--kind", spec.kind, "--repo", spec.repo, "--revision", spec.revision, "--scratch", str(scratch)],
                timeout=1800, env=hub_env())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        data = _answer(got, f"locking {spec.kind} {spec.repo}@{spec.revision[:12]}")
        if data["commit"] != spec.revision:
            raise StepError(f"{data['endpoint']} answers {spec.repo}@{spec.revision[:12]} with commit "
                            f"{data['commit']}", "the server is not a faithful Hub mirror: try another HF_ENDPOINT")
        listing = [Listed(**f) for f in data["files"]]
        if spec.kind == "model":
            files, note = hublock.select_model(listing, data.get("model_index") or {}, spec.weights or "safetensors")
        else:
            files, note = hublock.select_dataset(listing)
        repo = hublock.locked(spec, files, note, data["endpoint"], state.utc_now())
        locked[spec.kind] = repo
        results.append(Result(spec.kind, "lock", OK, f"{spec.repo}@{spec.revision[:12]}: {len(files)} files, "
                              f"{human(repo.size)} ({note}); from {data['endpoint']}", time.monotonic() - started))
    out = HubLock(man.model_lock, locked.get("model"), locked.get("dataset"))
    fsutil.write_atomic(man.model_lock, out.dump())
    hublock.read(man.model_lock)  # a lock we cannot read back is not written as a success
    results.append(Result("lock", "write", OK, f"wrote {man.model_lock}"))
    return out, results


def _answer(got: probe.ProbeResult, doing: str) -> dict:
    if got.data is not None and got.data.get("ok"):
        return got.data
    data = got.data or {}
    code = data.get("code")
    why = data.get("error") or got.problem or "no answer"
    if code in HINTS:
        raise StepError(f"{doing}: {why}", HINTS[code])
    raise StepError(f"{doing}: {why}" + (f"\n{got.stderr_tail}" if got.stderr_tail and not data else ""), NETWORK_HINT)


def fetch(man: Manifest, paths: Paths, runner: Runner, python: Path | None, which: str = "all") -> list[Result]:
    """Every locked file of the chosen repositories in the Hub cache, each checked; `python` (the target)
    is only needed when something must be downloaded."""
    return [_fetch_repo(hublock.for_manifest(man, spec.kind), paths, runner, python) for spec in specs(man, which)]


def _fetch_repo(repo: LockedRepo, paths: Paths, runner: Runner, python: Path | None) -> Result:
    started = time.monotonic()
    snap = Snapshot(hub_cache(), repo)
    progress(f"checking {repo.label}: {len(repo.files)} files, {human(repo.size)} in {snap.folder}")
    todo = [f for f in repo.files if snap.problem(f) is not None and not snap.adopt_blob(f)]
    if not todo:
        return Result(repo.kind, "fetch", OK, f"{repo.repo}@{repo.revision[:12]}: all {len(repo.files)} files "
                      f"({human(repo.size)}) in place, sha256 checked; nothing fetched; {snap.folder}",
                      time.monotonic() - started)
    if python is None:
        raise InputError(f"{repo.label}: {len(todo)} files to fetch and no target environment to fetch them with",
                         "run ./bootstrap.sh or sd-env install first (the fetch uses the target's huggingface_hub)")
    size = sum(f.size for f in todo)
    progress(f"fetching {len(todo)} of {len(repo.files)} files ({human(size)}) of {repo.label} at "
             f"{hub_env().get('HF_ENDPOINT') or 'https://huggingface.co'}")
    blobs = list({f.etag: f for f in reversed(todo)}.values())[::-1]  # files with the same bytes share one blob
    for f in blobs:
        snap.incomplete(f).parent.mkdir(parents=True, exist_ok=True)
    work = paths.work / "hub-fetch"
    work.mkdir(parents=True, exist_ok=True)
    plan = {"kind": repo.kind, "repo": repo.repo, "revision": repo.revision,
            "files": [{"path": f.path, "size": f.size, "etag": f.etag, "incomplete": str(snap.incomplete(f))}
                      for f in blobs]}
    (work / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    result_file = work / "result.json"
    result_file.unlink(missing_ok=True)
    code = runner.attached([str(python), str(probe.script("hub_fetch.py")), "--plan", str(work / "plan.json"),
                            "--result", str(result_file)], env=hub_env())
    try:
        got = json.loads(result_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        got = {"ok": False, "error": f"the fetch probe exited with {code} and left no result"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Whatever reached its full size is checked and placed (or removed), even after a failure elsewhere.
    refused = {}
    for f in blobs:
        partial = snap.incomplete(f)
        if partial.is_file() and partial.stat().st_size >= f.size:
            why = snap.place(f, partial)
            if why:
                refused[f.path] = why
    refused_blobs = {f.etag for f in blobs if f.path in refused}
    for f in todo:  # a file whose bytes another file brought: its blob is there now, checked
        if f not in blobs and f.etag not in refused_blobs:
            snap.adopt_blob(f)
    if refused:
        path, why = next(iter(refused.items()))
        raise StepError(f"{repo.label}: refused {path} as served: {why}; it was removed, nothing of it is in the "
                        "cache" + (f" (and {len(refused) - 1} more: {', '.join(list(refused)[1:4])})"
                                   if len(refused) > 1 else ""),
                        "the server (or a mirror, or something between) serves other bytes than the lock pins: do "
                        "not use them; try another HF_ENDPOINT, or install from a bundle made where the files "
                        "were right")
    if not got.get("ok"):
        hint = HINTS.get(str(got.get("code")), NETWORK_HINT + "; a re-run resumes where this one stopped")
        raise StepError(f"{repo.label}: {got.get('error')}", hint)
    left = snap.missing(hashed=False)
    if left:
        raise StepError(f"{repo.label}: {len(left)} files still not in place after the fetch: {next(iter(left))}",
                        "run `sd-env model fetch` again; the log has the fetch's output")
    resumed = [d for d in got.get("done", []) if d.get("resumed_from")]
    said = f", {len(resumed)} resumed" if resumed else ""
    return Result(repo.kind, "fetch", OK, f"{repo.repo}@{repo.revision[:12]}: fetched {len(todo)} files "
                  f"({human(size)}{said}), all {len(repo.files)} in place, sha256 checked; {snap.folder}",
                  time.monotonic() - started)


def pinned(man: Manifest, kind: str, hashed: bool = True) -> tuple[Path, LockedRepo]:
    """The snapshot folder of the manifest's locked [model] or [dataset], every file checked (size and,
    when `hashed`, sha256) before anything reads it; an error naming what is missing or differs."""
    repo = hublock.for_manifest(man, kind)
    snap = Snapshot(hub_cache(), repo)
    progress(f"checking the pinned {repo.label}: {len(repo.files)} files ({human(repo.size)})"
             + (", sha256" if hashed else ", sizes"))
    bad = snap.missing(hashed)
    if bad:
        path, why = next(iter(bad.items()))
        raise InputError(f"the pinned {repo.label} is not in place in {snap.folder}: {path}: {why}"
                         + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                         "run `sd-env model fetch` (it fetches exactly the locked files), or pass "
                         f"--{'model' if kind == 'model' else 'data'} DIR")
    return snap.folder, repo
