"""`sd-env bundle create`: pack what the manifest needs into a folder that installs offline.

Built in OUT.partial and renamed to OUT only when index.json is written, so an
interrupted create never leaves something that looks like a bundle; a re-run
reuses the wheels already in OUT.partial. Layout and checks: bundle.py.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sd_env import __version__, gitcmd, lockfile, sources, state, torchtpu
from sd_env.bundle import (
    EXTRA,
    GIT,
    INDEX,
    MANIFESTS,
    PACKAGES,
    TOOL,
    TORCH_TPU,
    BundleError,
    GitHistory,
    Index,
    Member,
    artifact_name,
    human,
)
from sd_env.errors import InputError
from sd_env.fsutil import sha256_file
from sd_env.manifest import Component, Manifest
from sd_env.paths import Paths
from sd_env.report import progress
from sd_env.runner import Runner

REPO = Path(__file__).resolve().parents[2]  # sd-env's source tree (pyproject.toml), to build its wheel
# pip's --platform for each lock platform. pip widens only the legacy manylinux2014 tag to the
# older ones, so the glibc 2.x tags up to a 2022 distribution are listed one by one.
PIP_PLATFORMS = {
    f"{arch}-unknown-linux-gnu": [f"manylinux_2_{minor}_{arch}" for minor in range(35, 17, -1)]
    + [f"manylinux2014_{arch}", f"linux_{arch}"]
    for arch in ("x86_64", "aarch64")
}
TOOL_EXTRAS = ["uv"]  # the fast installer, optional for sd-env but worth 15 MB
# bootstrap.sh and what it sources: `OUT/bootstrap.sh` installs from the bundle it lies in,
# so a host (or an image build) needs nothing from sd-env's repository.
BOOTSTRAP = ("bootstrap.sh", "scripts/find-python.sh", "scripts/bundle-tool.sh")


@dataclass(frozen=True)
class CreateOptions:
    out: Path
    torch_tpu_wheel: str | None = None
    includes: dict[str, Path] = field(default_factory=dict)  # NAME -> file or folder
    mirror: str | None = None
    from_home: Path | None = None  # a finished home to take checkouts from (read only)
    reuse: tuple[Path, ...] = ()  # folders of wheels to take locked artifacts from before downloading


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

    if lock is not None:
        _packages(members, lock, runner, opts.reuse, man)
    for comp in man.components:
        index.components.append(_git_history(comp, source_home, paths, members, runner, opts.mirror))
    _tool(members, runner, man)
    _room(out, known, f"written: {human(members.size)}; still to write: {human(known)} (bundle total "
          f"{human(members.size + known)})")
    if wheel is not None:
        index.torch_tpu = members.add(f"{TORCH_TPU}/{wheel.name}", "torch_tpu", wheel).path
    for name, files in extras.items():
        progress(f"copying extra {name}: {len(files)} files, {human(sum(f.stat().st_size for f, _ in files))}")
        for path, rel in files:
            members.add(f"{EXTRA}/{name}/{rel}", "extra", path)
        index.extras[name] = f"{EXTRA}/{name}"

    index.members = sorted(members.items.values(), key=lambda m: m.path)
    index.created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    index.sd_env_version = __version__
    (staging / INDEX).write_text(index.dump(), encoding="utf-8")
    staging.rename(out)
    kinds: dict[str, list[Member]] = {}
    for m in index.members:
        kinds.setdefault(m.kind, []).append(m)
    summary = ", ".join(f"{k} {len(v)} ({human(sum(m.size for m in v))})" for k, v in sorted(kinds.items()))
    progress(f"wrote {out}: {len(index.members)} members, {human(index.size)} in {time.monotonic() - started:.0f} s"
             f" [{summary}]")
    return index


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


def _git_history(comp: Component, source_home: Paths, paths: Paths, members: _Members, runner: Runner,
                 mirror: str | None) -> GitHistory:
    """The checkout of a finished home when it is at the pin, else a fresh clone (or the sdist)."""
    from sd_env.checkouts import pinned_commit  # the one rule for what a component is pinned to

    checkout = source_home.checkout(comp.name)
    rec = state.load(source_home.state).components.get(comp.name)
    pinned = pinned_commit(comp, rec)
    scratch = None
    if not (gitcmd.is_repo(checkout) and (pinned is None or gitcmd.head(runner, checkout) == pinned)):
        scratch = members.root / "tmp"
        checkout = scratch / comp.name
        shutil.rmtree(checkout, ignore_errors=True)
        got = sources.fetch(comp, checkout, scratch, runner, mirror=mirror, expect=comp.commit,
                            python=Path(sys.executable), sdist_fallback=comp.sdist)
        source, sdist_sha256 = got.source, got.sdist_sha256
    else:
        has_tag = gitcmd.git(runner, checkout, "rev-parse", "-q", "--verify", f"refs/tags/{comp.tag}^{{commit}}",
                             check=False).stdout.strip()
        source = rec.source if rec else ("git" if has_tag else "sdist")
        sdist_sha256 = rec.sdist_sha256 if rec else None
    head = gitcmd.head(runner, checkout)
    ref = f"refs/tags/{comp.tag}" if source == "git" else "HEAD"
    rel = f"{GIT}/{comp.name}.bundle"
    dest = members.root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    where = "a fresh clone" if scratch else str(checkout)
    if source == "sdist":
        progress(f"git: {comp.name} came from its PyPI sdist (no git history): bundling the imported "
                 f"single-commit repo {head[:12]} from {where} as it is")
    else:
        progress(f"git: bundling {comp.name} {comp.tag} at {head[:12]} from {where}")
    gitcmd.git(runner, checkout, "bundle", "create", str(dest), ref, timeout=gitcmd.FETCH_TIMEOUT)
    shallow_file = checkout / ".git" / "shallow"
    shallow = tuple(shallow_file.read_text().split()) if shallow_file.is_file() else ()
    members.add(rel, "git")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return GitHistory(comp.name, comp.tag, head, source, ref, rel, shallow, sdist_sha256)


def _tool(members: _Members, runner: Runner, man: Manifest) -> None:
    """sd-env as a wheel plus its dependencies (and uv), minus files already in packages/."""
    if not (REPO / "pyproject.toml").is_file():
        raise InputError(f"sd-env's source tree is not at {REPO}", "run `sd-env bundle create` from a checkout "
                         "of sd-env (bootstrap.sh installs it editable)")
    folder = members.root / TOOL
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    progress("building sd-env's wheel and downloading its dependencies")
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = members.root / "tmp" / "sd-env-src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(REPO / "installer", src / "installer", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, src / name)
    runner.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps", "-w",
                str(folder), str(src)], timeout=1200, label="pip: building sd-env's wheel")
    shutil.rmtree(members.root / "tmp")
    own = next(folder.glob("sd_env-*.whl"))
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(folder),
            "--only-binary", ":all:", "--python-version", man.python, "--implementation", "cp"]
    for plat in PIP_PLATFORMS.get(man.lock.platform if man.lock else "x86_64-unknown-linux-gnu", []):
        argv += ["--platform", plat]
    runner.run([*argv, str(own), *TOOL_EXTRAS], timeout=1200, label="pip: downloading sd-env's dependencies")
    in_packages = {m.sha256 for m in members.items.values() if m.kind == "package"}
    for path in sorted(folder.iterdir()):
        if sha256_file(path) in in_packages:
            path.unlink()  # no member twice: bootstrap looks in packages/ too
        else:
            members.add(f"{TOOL}/{path.name}", "tool")
    for rel in BOOTSTRAP:
        members.add(rel, "bootstrap", REPO / rel)
        (members.root / rel).chmod(0o755)


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
