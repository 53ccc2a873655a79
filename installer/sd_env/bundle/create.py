"""`sd-env bundle create`: pack what the manifest needs into a folder that installs offline.

Built in OUT.partial and renamed to OUT only when index.json is written, so an
interrupted create never leaves something that looks like a bundle; a re-run
reuses the wheels already in OUT.partial, and anything else left there is
removed before the index is written. Layout and checks: bundle/format.py; the id and
the signature: bundle/trust.py.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sd_env import __version__
from sd_env.bundle import models as bundle_models
from sd_env.bundle import trust as bundle_trust
from sd_env.bundle.format import (
    BOOTSTRAP,
    EXTRA,
    GIT,
    INDEX,
    MANIFESTS,
    PACKAGES,
    PYTHON,
    SDIST,
    SIGNATURE,
    TOOL,
    TORCH_TPU,
    BundleError,
    GitHistory,
    Index,
    Member,
    artifact_name,
    human,
)
from sd_env.core import lockfile, state
from sd_env.core.manifest import Component, Manifest
from sd_env.errors import CommandError, InputError
from sd_env.patching import sources
from sd_env.report import progress
from sd_env.system import gitcmd, shipped
from sd_env.system.fsutil import sha256_file
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target import pythons, torchtpu

REPO = shipped.CHECKOUT  # sd-env's source tree (pyproject.toml), to build its wheel
# pip's --platform for each lock platform. pip widens only the legacy manylinux2014 tag to the
# older ones, so the glibc 2.x tags up to a 2022 distribution are listed one by one.
PIP_PLATFORMS = {
    f"{arch}-unknown-linux-gnu": [f"manylinux_2_{minor}_{arch}" for minor in range(35, 17, -1)]
    + [f"manylinux2014_{arch}", f"linux_{arch}"]
    for arch in ("x86_64", "aarch64")
}
TOOL_EXTRAS = ["uv"]  # the fast installer, optional for sd-env but worth 15 MB


@dataclass(frozen=True)
class CreateOptions:
    out: Path
    torch_tpu_wheel: str | None = None
    includes: dict[str, Path] = field(default_factory=dict)  # NAME -> file or folder
    mirror: str | None = None
    from_home: Path | None = None  # a finished home to take checkouts from (read only)
    reuse: tuple[Path, ...] = ()  # folders of wheels (and sdists) to take pinned artifacts from before downloading
    sign: Path | None = None  # an SSH private key: index.json.sig by `ssh-keygen -Y sign`
    python: pythons.Sources | None = None  # where the standalone Python comes from; None: the bundle carries none
    with_model: bool = False  # the model lock's files (model/), from the Hub cache
    with_data: bool = False  # the pinned dataset's files (data/)


class _Members:
    """The members written so far; a path twice is a bug, not a silent overwrite."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.items: dict[str, Member] = {}

    def add(self, rel: str, kind: str, src: Path | None = None) -> Member:
        if rel in self.items:
            raise BundleError(f"bundle member {rel} would be written twice", "rename one of the --include folders")
        dest = self.root / rel
        if src is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        m = Member(rel, dest.stat().st_size, sha256_file(dest), kind)
        self.items[rel] = m
        return m

    @property
    def size(self) -> int:
        return sum(m.size for m in self.items.values())


def create(man: Manifest, paths: Paths, runner: Runner, opts: CreateOptions) -> Index:
    started = time.monotonic()
    out = opts.out.resolve()
    if out.exists():
        raise InputError(f"{out} already exists", "choose a new OUT folder, or delete the old bundle first")
    if opts.sign is not None and not opts.sign.is_file():
        raise InputError(f"--sign {opts.sign}: no such key file", "pass an SSH private key (ssh-keygen -t ed25519 "
                         "-f KEY makes one; give its .pub line to the hosts' allowed-signers file)")
    staging = out.with_name(out.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    members = _Members(staging)
    source_home = Paths(opts.from_home.resolve()) if opts.from_home else paths

    wheel = _torch_tpu_wheel(man, paths, runner, opts)
    extras = {name: _files(path) for name, path in opts.includes.items()}
    known = sum(f.stat().st_size for files in extras.values() for f, _rel in files)
    known += wheel.stat().st_size if wheel else 0
    lock = lockfile.read(man.lock.files[lockfile.flavour_order(man)[0]]) if man.lock else None
    progress(f"bundle of {man.name} -> {out}: {len(lock.pins) if lock else 0} locked packages, "
             f"{len(man.components)} git histories, sd-env and its dependencies"
             + (f", a standalone Python {man.python}" if opts.python else ", no Python (--no-python)")
             + (f", torch_tpu {wheel.name}" if wheel else ", no torch_tpu wheel")
             + "".join(f", extra {n} ({len(f)} files)" for n, f in extras.items()))
    _room(out, known, f"known so far (extras, torch_tpu): {human(known)}, plus the locked packages, whose size "
          "pip tells only by downloading them (2.8 GB for the default manifest's torch closure)")

    index = Index(man.name, "", sha256_file(man.path), None, man.lock.platform if man.lock else None, man.python)
    index.manifest_path = _project_file(members, man, man.path, "manifest")
    if man.lock is not None:
        for path in sorted(man.lock.files.values()):
            if path.is_file():
                rel = _project_file(members, man, path, "lock")
                if lock is not None and path == lock.path:
                    index.lock_path = rel
        if man.lock.requirements.is_file():
            _project_file(members, man, man.lock.requirements, "lock")
    for comp in man.components:
        for patch in comp.patches:
            _project_file(members, man, patch, "patch")
    if man.model_lock.is_file():  # small, and what the manifest's [model] is pinned to
        _project_file(members, man, man.model_lock, "model-lock")
    elif opts.with_model or opts.with_data:
        raise InputError(f"--with-model/--with-data: no model lock at {man.model_lock}",
                         "run `sd-env model lock` and `sd-env model fetch` first")

    if lock is not None:
        _packages(members, lock, runner, opts.reuse, man)
    for comp in man.components:
        index.components.append(_source(comp, source_home, paths, members, runner, opts))
    index.tool = _tool(members, runner, man)
    if opts.python is not None:
        index.interpreter = _interpreter(members, runner, man, opts.python)
    _room(out, known, f"written: {human(members.size)}; still to write: {human(known)} (bundle total "
          f"{human(members.size + known)})")
    if wheel is not None:
        index.torch_tpu = members.add(f"{TORCH_TPU}/{wheel.name}", "torch_tpu", wheel).path
    bundle_models.add(members, man, opts.with_model, opts.with_data)
    for name, files in extras.items():
        progress(f"copying extra {name}: {len(files)} files, {human(sum(f.stat().st_size for f, _ in files))}")
        for path, rel in files:
            members.add(f"{EXTRA}/{name}/{rel}", "extra", path)
        index.extras[name] = f"{EXTRA}/{name}"

    index.members = sorted(members.items.values(), key=lambda m: m.path)
    index.created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    index.sd_env_version = __version__
    _prune(staging, members)
    (staging / INDEX).write_text(index.dump(), encoding="utf-8")
    if opts.sign is not None:
        _sign(runner, staging, opts.sign)
    staging.rename(out)
    kinds: dict[str, list[Member]] = {}
    for m in index.members:
        kinds.setdefault(m.kind, []).append(m)
    summary = ", ".join(f"{k} {len(v)} ({human(sum(m.size for m in v))})" for k, v in sorted(kinds.items()))
    progress(f"wrote {out}: {len(index.members)} members, {human(index.size)} in {time.monotonic() - started:.0f} s"
             f" [{summary}]")
    signed = f"; signed with {opts.sign} ({SIGNATURE})" if opts.sign else ""
    progress(f"bundle id {bundle_id(out)}{signed}: give it to whoever installs the bundle (install --bundle OUT "
             "--expect ID); it is the sha256 of index.json")
    return index


def bundle_id(out: Path) -> str:
    return sha256_file(out / INDEX)


def _prune(staging: Path, members: _Members) -> None:
    """A leftover of an earlier, interrupted create (another lock, another --include) is not a member:
    remove it, so the bundle holds exactly what its index lists."""
    stale = [p for p in sorted(staging.rglob("*"), reverse=True)
             if (p.is_file() or p.is_symlink()) and p.relative_to(staging).as_posix() not in members.items]
    for path in stale:
        path.unlink()
    for folder in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if stale:
        progress(f"removed {len(stale)} files left in {staging.name} by an earlier run that no longer belong: "
                 + ", ".join(p.relative_to(staging).as_posix() for p in stale[:3]) + (" ..." if len(stale) > 3 else ""))


def _sign(runner: Runner, staging: Path, key: Path) -> None:
    (staging / SIGNATURE).unlink(missing_ok=True)
    runner.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", bundle_trust.NAMESPACE, str(staging / INDEX)],
               timeout=120, label="ssh-keygen: signing index.json",
               hint="--sign takes an SSH private key (OpenSSH 8.2 or newer; a key with a passphrase asks for it)")


def _room(out: Path, need: int, detail: str) -> None:
    free = shutil.disk_usage(out.parent).free
    progress(f"disk: {human(free)} free at {out.parent}; {detail}")
    if need > free:
        raise InputError(f"not enough room at {out.parent}: the bundle needs at least {human(need)}, "
                         f"{human(free)} is free", "free some space or choose OUT on another disk")


def _files(path: Path) -> list[tuple[Path, str]]:
    path = path.expanduser()
    if path.is_file():
        return [(path, path.name)]
    if not path.is_dir():
        raise InputError(f"--include: {path} does not exist", "write --include NAME=PATH with an existing PATH")
    return sorted((p, p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file())


def _project_file(members: _Members, man: Manifest, path: Path, kind: str) -> str:
    """Manifest, lock and patch files keep their places relative to the manifest, so the
    bundle's copy of the manifest reads them where it expects them."""
    rel = os.path.normpath(os.path.join(MANIFESTS, os.path.relpath(path.resolve(), man.path.resolve().parent)))
    if rel.split(os.sep)[0] == "..":
        raise BundleError(f"{path} lies above the manifest's project", "keep patches and locks beside "
                          "manifests/ (patches_dir = \"../patches\")")
    return members.add(Path(rel).as_posix(), kind, path).path


def _packages(members: _Members, lock: lockfile.Lock, runner: Runner, reuse: tuple[Path, ...],
              man: Manifest) -> None:
    folder = members.root / PACKAGES
    folder.mkdir(parents=True, exist_ok=True)
    reused = 0
    for where in reuse:
        for path in sorted(where.glob("*")):
            got = artifact_name(path.name)
            dest = folder / path.name
            if got and got[0] in lock.pins and got[1] == lock.pins[got[0]] and not dest.exists() \
                    and sha256_file(path) in lock.hashes[got[0]]:
                shutil.copyfile(path, dest)
                reused += 1
    progress(f"downloading the locked artifacts into {folder} ({reused} taken from --reuse folders; pip skips "
             "files already there)")
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "--require-hashes",
            "-r", str(lock.path), "-d", str(folder), "--python-version", man.python, "--implementation", "cp"]
    for plat in PIP_PLATFORMS.get(man.lock.platform if man.lock else "", []):
        argv += ["--platform", plat]
    runner.run(argv, timeout=3600, label=f"pip: downloading {len(lock.pins)} locked artifacts",
               hint="downloading needs the package index (PIP_INDEX_URL / pip.conf)")
    chosen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        got = artifact_name(path.name)
        ok = got is not None and lock.pins.get(got[0]) == got[1] and sha256_file(path) in lock.hashes[got[0]]
        if not ok or (got and got[0] in chosen and not path.name.endswith(".whl")):
            path.unlink()  # a leftover of an earlier lock, or a second file for one pin
            continue
        assert got is not None
        if got[0] in chosen:
            chosen[got[0]].unlink()
        chosen[got[0]] = path
    missing = sorted(set(lock.pins) - set(chosen))
    if missing:
        raise BundleError(f"pip download left out {', '.join(missing)}", "see the log; re-run to retry")
    for path in chosen.values():
        members.add(f"{PACKAGES}/{path.name}", "package")


def _source(comp: Component, source_home: Paths, paths: Paths, members: _Members, runner: Runner,
            opts: CreateOptions) -> GitHistory:
    """What the manifest pins for the component: its git history at `commit`, or else its sdist at
    `sdist_sha256` (what the home installed decides when the manifest pins both)."""
    from sd_env.patching.checkouts import pinned_commit  # the one rule for what a component is pinned to

    rec = state.load(source_home.state).components.get(comp.name)
    if comp.commit is None and comp.sdist_sha256 is None:
        seen = f" (this home recorded {rec.commit} for {comp.tag})" if rec and rec.source == "git" else ""
        raise InputError(f"{comp.name}: the manifest pins neither a commit nor an sdist_sha256, so nothing could "
                         f"check its source in the bundle{seen}",
                         f"add commit = \"...\" (git rev-parse {comp.tag}^{{commit}}) or sdist_sha256 = \"...\" to "
                         f"the [[component]] {comp.name}")
    if comp.commit is None or (comp.sdist_sha256 and rec is not None and rec.source == "sdist"):
        return _sdist(comp, members, runner, opts.reuse)
    checkout = source_home.checkout(comp.name)
    scratch = None
    if not (gitcmd.is_repo(checkout) and gitcmd.head(runner, checkout) == pinned_commit(comp, rec)):
        scratch = members.root / "tmp"
        checkout = scratch / comp.name
        shutil.rmtree(checkout, ignore_errors=True)
        try:
            sources.fetch_git(comp, checkout, scratch, runner, mirror=opts.mirror, expect=comp.commit)
        except CommandError as exc:
            if not (comp.sdist_sha256 and sources.unreachable(exc) and not exc.disk_full):
                raise
            progress(f"WARNING: git cannot reach {sources.mirror_url(comp.git, opts.mirror)}; bundling the sdist "
                     f"{comp.name}=={comp.version} the manifest pins instead")
            shutil.rmtree(scratch, ignore_errors=True)
            return _sdist(comp, members, runner, opts.reuse)
    head = gitcmd.head(runner, checkout)
    ref = f"refs/tags/{comp.tag}"
    rel = f"{GIT}/{comp.name}.bundle"
    dest = members.root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    progress(f"git: bundling {comp.name} {comp.tag} at {head[:12]} from {'a fresh clone' if scratch else checkout}")
    gitcmd.git(runner, checkout, "bundle", "create", str(dest), ref, timeout=gitcmd.FETCH_TIMEOUT)
    shallow_file = checkout / ".git" / "shallow"
    shallow = tuple(shallow_file.read_text().split()) if shallow_file.is_file() else ()
    members.add(rel, "git")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return GitHistory(comp.name, comp.tag, head, "git", ref, rel, shallow)


def _sdist(comp: Component, members: _Members, runner: Runner, reuse: tuple[Path, ...]) -> GitHistory:
    """The component's PyPI sdist, checked against the manifest's sdist_sha256 (a --reuse folder first).

    pip prepares the sdist's metadata to download it; with build isolation, because sd-env's own venv may
    have no setuptools or an old one without bdist_wheel (uv makes venvs without either).
    """
    folder = members.root / SDIST
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{comp.name}-{comp.version}.tar.gz"
    for where in reuse:
        if (where / name).is_file() and sha256_file(where / name) == comp.sdist_sha256:
            shutil.copyfile(where / name, folder / name)
    archive = folder / name
    if not (archive.is_file() and sha256_file(archive) == comp.sdist_sha256):
        archive.unlink(missing_ok=True)
        download = members.root / "tmp" / f"sdist-{comp.name}"
        shutil.rmtree(download, ignore_errors=True)
        runner.run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
                    "--no-binary", ":all:", "-d", str(download),
                    f"{comp.name}=={comp.version}"], timeout=1200,
                   label=f"pip: downloading the sdist of {comp.name}=={comp.version}",
                   hint="downloading needs the package index (PIP_INDEX_URL / pip.conf)")
        got = sorted(download.glob("*.tar.gz"))
        if len(got) != 1:
            raise BundleError(f"{comp.name}: expected one sdist from pip download, got {[p.name for p in got]}")
        sources.check_sdist(comp, got[0])
        os.replace(got[0], archive)
        shutil.rmtree(download, ignore_errors=True)
    progress(f"sdist: bundling {name} (sha256 {comp.sdist_sha256[:12] if comp.sdist_sha256 else '?'}, as pinned)")
    member = members.add(f"{SDIST}/{name}", "sdist")
    return GitHistory(comp.name, comp.tag, "", "sdist", "", member.path, (), member.sha256)


def _tool(members: _Members, runner: Runner, man: Manifest) -> list[str]:
    """sd-env as a wheel plus its dependencies (and uv), minus files already in packages/; returns
    the member paths of all of them (bootstrap installs exactly these)."""
    if not (REPO / "pyproject.toml").is_file():
        raise InputError(f"sd-env's source tree is not at {REPO}", "run `sd-env bundle create` from a checkout "
                         "of sd-env (bootstrap.sh installs it editable)")
    folder = members.root / TOOL
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    progress("building sd-env's wheel and downloading its dependencies")
    src = shipped.source_copy(members.root / "tmp" / "sd-env-src")
    runner.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps", "-w",
                str(folder), str(src)], timeout=1200, label="pip: building sd-env's wheel")
    shutil.rmtree(members.root / "tmp")
    own = next(folder.glob("sd_env-*.whl"))
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(folder),
            "--only-binary", ":all:", "--python-version", man.python, "--implementation", "cp"]
    for plat in PIP_PLATFORMS.get(man.lock.platform if man.lock else "x86_64-unknown-linux-gnu", []):
        argv += ["--platform", plat]
    runner.run([*argv, str(own), *TOOL_EXTRAS], timeout=1200, label="pip: downloading sd-env's dependencies")
    in_packages = {m.sha256: m.path for m in members.items.values() if m.kind == "package"}
    wheels = []
    for path in sorted(folder.iterdir()):
        digest = sha256_file(path)
        if digest in in_packages:
            path.unlink()  # no member twice: the tool list names the packages/ copy
            wheels.append(in_packages[digest])
        else:
            wheels.append(members.add(f"{TOOL}/{path.name}", "tool").path)
    for rel in BOOTSTRAP:
        members.add(rel, "bootstrap", REPO / rel)
        (members.root / rel).chmod(0o755)
    return sorted(wheels)


def _interpreter(members: _Members, runner: Runner, man: Manifest, given: pythons.Sources) -> str:
    """The standalone CPython of the manifest's version (sd-env's own venv uses the same version: its
    wheels in tool/ are downloaded for it), for hosts that have none."""
    work = members.root / "tmp"
    archive = pythons.download_archive(runner, man.python, given, work)
    rel = f"{PYTHON}/{archive.name}"
    (members.root / PYTHON).mkdir(exist_ok=True)
    os.replace(archive, members.root / rel)
    shutil.rmtree(work, ignore_errors=True)
    return members.add(rel, "python").path


def _torch_tpu_wheel(man: Manifest, paths: Paths, runner: Runner, opts: CreateOptions) -> Path | None:
    location = opts.torch_tpu_wheel or (man.torch_tpu.location if man.torch_tpu else None)
    if not location:
        return None
    path = torchtpu.local_wheel(runner, location, paths.wheels)
    if path is None:
        progress(f"WARNING: no torch_tpu wheel at {location}: the bundle installs a CPU-only environment "
                 "(pass --torch-tpu-wheel PATH to include Sophgo's wheel)")
        return None
    if man.torch_tpu:
        torchtpu.check_wheel(man.torch_tpu, path)
    return path
