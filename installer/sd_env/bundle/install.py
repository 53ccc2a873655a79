"""`sd-env install --bundle OUT`: the same install, with every source taken from the bundle.

install.py calls in here at three marked hooks (the lock, the torch_tpu
wheel, each component's fetch). pip and uv are pointed only at the bundle:
`--no-index --find-links`, their config files ignored and every PIP_*/UV_*
variable of the caller's environment dropped (this machine's, for one, adds
local wheel folders), so an artifact missing from the bundle is an error
naming it, never a download.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from sd_env.bundle import format as bundle
from sd_env.bundle import models as bundle_models
from sd_env.bundle import trust as bundle_trust
from sd_env.bundle.format import PACKAGES, BundleError
from sd_env.bundle.trust import Checked
from sd_env.core import hublock, state
from sd_env.core.lockfile import Lock
from sd_env.core.manifest import Component
from sd_env.errors import CommandError, StepError
from sd_env.patching import sources
from sd_env.report import Result, human, progress
from sd_env.system import gitcmd
from sd_env.system.fsutil import sha256_file
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.system.tools import find_uv
from sd_env.target.closure import explain_hash_mismatch

_NOT_FOUND = (re.compile(r"No matching distribution found for (\S+)"),
              re.compile(r"Because (\S+) was not found in the provided package locations and you require (\S+?),"),
              re.compile(r"Because (\S+==\S+) was not found in the provided package locations"))


def open_checked(root: Path, runner: Runner, expect: str | None = None, allowed_signers: Path | None = None,
                 checkout: Path | None = None) -> Checked:
    """The anchor, then every member, before anything is used (the whole bundle: a few seconds per GB)."""
    progress(f"checking the bundle {root}: its anchor, then every member against its index")
    checked = bundle_trust.verify(root, runner, expect, allowed_signers, checkout)
    progress(checked.anchor.said())
    progress(f"bundle ok: {len(checked.index.members)} members, {human(checked.bytes_checked)}, "
             f"made for {checked.index.manifest_name} on {checked.index.created}")
    return checked


def hermetic(argv: list[str], **env: str) -> list[str]:
    """`argv` run with no PIP_*/UV_* variable of the caller and pip's config files ignored."""
    # UV_CACHE_DIR only says where uv keeps what it already verified; it adds no source.
    dropped = [f"--unset={k}" for k in sorted(os.environ) if k.startswith(("PIP_", "UV_")) and k != "UV_CACHE_DIR"]
    return ["env", *dropped, "PIP_CONFIG_FILE=/dev/null", "UV_NO_CONFIG=1", "PIP_DISABLE_PIP_VERSION_CHECK=1",
            *(f"{k}={v}" for k, v in env.items()), *argv]


def private_copy(checked: Checked, rel: str, work: Path) -> Path:
    """A copy of the member `rel` in a folder of sd-env's own, checked against the index: what is
    used is what was hashed, whatever a writer to the bundle's folder does meanwhile."""
    member = checked.index.member(rel)
    if member is None:
        raise BundleError(f"{rel} is not a member of the bundle {checked.root}", "re-create the bundle")
    dest = work / "from-bundle" / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checked.root / rel, dest)
    got = sha256_file(dest)
    if got != member.sha256:
        raise BundleError(f"bundle member {rel} changed since it was checked (sha256 {got}, the index says "
                          f"{member.sha256})", "something is writing into the bundle: copy it somewhere only you "
                          "can write, and install from there")
    return dest


def install_lock(runner: Runner, python: Path, checked: Checked, work: Path, *, use_uv: bool = True) -> str:
    """The lock (a checked copy) from the bundle's packages/ only; returns which installer ran."""
    assert checked.lock is not None and checked.index.lock_path is not None
    lock = Lock(private_copy(checked, checked.index.lock_path, work), checked.lock.pins, checked.lock.hashes)
    root = checked.root
    links = str(root / PACKAGES)
    uv = find_uv() if use_uv else None
    if uv:
        argv = [uv, "pip", "install", "--python", str(python), "--require-hashes", "--no-deps", "--offline",
                "--no-config", "--no-index", "--find-links", links, "-r", str(lock.path)]
    else:
        argv = [str(python), "-m", "pip", "install", "--require-hashes", "--no-deps", "--no-index",
                "--find-links", links, "-r", str(lock.path)]
    try:
        runner.run(hermetic(argv), timeout=3600,
                   label=f"{'uv' if uv else 'pip'}: installing {len(lock.pins)} locked packages from the bundle")
    except CommandError as exc:
        flat = " ".join(exc.output.split())  # uv wraps its messages
        for pattern in _NOT_FOUND:
            match = pattern.search(flat)
            if match:
                want = match.groups()[-1]
                raise StepError(f"the bundle has no artifact for {want} in {links} (nothing was fetched: "
                                "installs from a bundle never use an index)",
                                "run `sd-env bundle verify` on it; copy the bundle again or re-create it") from None
        raise explain_hash_mismatch(exc, lock) from None
    return "uv" if uv else "pip"


def install_file(runner: Runner, python: Path, wheel: Path, *, use_uv: bool = True) -> None:
    uv = find_uv() if use_uv else None
    if uv:
        argv = [uv, "pip", "install", "--python", str(python), "--no-deps", "--reinstall", "--offline",
                "--no-config", "--no-index", str(wheel)]
    else:
        argv = [str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", str(wheel)]
    runner.run(hermetic(argv))


def fetch_component(comp: Component, paths: Paths, runner: Runner, checked: Checked,
                    pinned: str | None) -> tuple[str, state.ComponentState]:
    """The checkout from the bundle: git/NAME.bundle at the manifest's commit (the index's word is
    never enough), or the bundled sdist, imported as install does it, at the manifest's sdist_sha256."""
    index, root = checked.index, checked.root
    hist = next((h for h in index.components if h.name == comp.name), None)
    if hist is None:
        raise BundleError(f"the bundle has no source for {comp.name}", "re-create the bundle")
    if pinned and hist.commit != pinned:
        raise BundleError(f"{hist.path} holds {comp.name} at {hist.commit}, this home pins {pinned}",
                          "use a bundle made for this manifest, or a new --home")
    source = root / hist.path
    if hist.source == "sdist":
        progress(f"importing {comp.name} {comp.version} from the bundle's sdist ({hist.path})")
        copy = private_copy(checked, hist.path, paths.work)
        got = sources.import_sdist(comp, copy, paths.checkout(comp.name), paths.work, runner)
        if pinned and got.commit != pinned:
            raise BundleError(f"{hist.path} imports as {got.commit}, this home pins {pinned}",
                              "use a bundle made for this manifest, or a new --home")
        rec = state.ComponentState("sdist", comp.tag, got.commit, sdist_sha256=got.sdist_sha256, version=comp.version)
        return f"the sdist {hist.path} (sha256 {got.sdist_sha256[:12] if got.sdist_sha256 else '?'}, as pinned) " \
               f"imported at {got.commit[:12]}, no network", rec
    want = comp.commit
    if want is None:  # bundle_trust.complete refuses this; never take the index's word for it
        raise BundleError(f"{comp.name}: the manifest pins no commit to check {hist.path} against",
                          f"add commit = \"...\" to the [[component]] {comp.name}")
    progress(f"cloning {comp.name} {comp.tag} from the bundle ({hist.path})")
    tmp = sources.scratch(paths.work, comp.name)
    try:
        gitcmd.git(runner, tmp, "init", "-q")
        if hist.shallow:  # a depth-1 history: its boundary commits have no parents here
            (tmp / ".git" / "shallow").write_text("".join(f"{c}\n" for c in hist.shallow))
        gitcmd.git(runner, tmp, "remote", "add", "origin", str(source))
        local = f"refs/tags/{comp.tag}"
        gitcmd.git(runner, tmp, "fetch", "-q", "--no-tags", str(source), f"+{local}:{local}")
        commit = gitcmd.out(runner, tmp, "rev-parse", f"{local}^{{commit}}")
        if commit != want:
            raise BundleError(f"{hist.path}: {local} is {commit}, the manifest pins {want}",
                              "the bundle was changed after it was made: re-create it")
        gitcmd.git(runner, tmp, "checkout", "-q", "--detach", commit)
        sources.exclude_build_leftovers(tmp)
        sources.move_into_place(tmp, paths.checkout(comp.name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec = state.ComponentState("git", comp.tag, commit, version=comp.version)
    return f"git {comp.tag} at {commit[:12]} from the bundle ({hist.path}, no network)", rec


def place_models(checked: Checked, work: Path) -> list[Result]:
    """The model and dataset the bundle carries, into the Hub cache, checked against a private copy of
    its model lock (bundle/models.py); nothing when it carries none."""
    locks = [m.path for m in checked.index.members if m.kind == "model-lock"]
    if not locks or not any(m.kind in (bundle.MODEL, bundle.DATA) for m in checked.index.members):
        return []
    lock = hublock.read(private_copy(checked, locks[0], work))
    return bundle_models.place(checked.root, checked.index, lock)
