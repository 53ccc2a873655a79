"""The accelerate ladder: our TPU patch for every release from 0.16.0 to 1.14.0, at the text level.

The releases' own files (accelerator.py, utils/modeling.py) come from PyPI
(sdists; for 0.24.0, which has no sdist, the wheel's), downloaded once into
$SD_ENV_TEST_CACHE/sdists (default ~/.cache/sd-env-tests/sdists). PyPI lacks
1.1.0 and 1.11.0 on: those come from a git mirror with accelerate's tags
($SD_ENV_TEST_UPSTREAM_HISTORY, see conftest.upstream_history), else their
tests say skipped. Each shipped patch fits exactly the releases it is shipped
for; a direct jump from 0.16.0 and a chain of jumps between rungs end on the
rung's port, through the choice `sd-env repatch` makes (ladder.choose).
test_accelerate_walk.py installs, ports and proves them on the emulated device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from sd_env.patching import ladder, patches, port
from sd_env.system.runner import Runner
from tests.conftest import ROOT, git
from tests.patching.conftest import no_history, upstream_history

pytestmark = pytest.mark.network

RELEASES = ["0.16.0", "0.17.0", "0.17.1", "0.18.0", "0.19.0", "0.20.0", "0.20.1", "0.20.2", "0.20.3", "0.21.0",
            "0.22.0", "0.23.0", "0.24.0", "0.24.1", "0.25.0", "0.26.0", "0.26.1", "0.27.0", "0.27.1", "0.27.2",
            "0.28.0", "0.29.0", "0.29.1", "0.29.2", "0.29.3", "0.30.0", "0.30.1", "0.31.0", "0.32.0", "0.32.1",
            "0.33.0", "0.34.0", "0.34.1", "0.34.2", "1.0.0", "1.0.1", "1.1.0", "1.1.1", "1.2.0", "1.2.1", "1.3.0",
            "1.4.0", "1.5.0", "1.5.1", "1.5.2", "1.6.0", "1.7.0", "1.8.0", "1.8.1", "1.9.0", "1.10.0", "1.10.1",
            "1.11.0", "1.12.0", "1.13.0", "1.14.0"]
NO_SDIST = {"0.24.0"}  # PyPI has only a wheel: sd-env's sdist fallback cannot fetch it (git can)
GIT_ONLY = {"1.1.0", "1.11.0", "1.12.0", "1.13.0", "1.14.0"}  # not on PyPI at all
# The shipped patch each release takes: the first release it fits is in its name.
SHIPPED = {"0.16.0", "0.20.0", "0.21.0", "0.23.0", "0.25.0", "0.28.0", "0.29.0", "0.30.0", "0.32.0", "0.33.0",
           "1.0.0", "1.1.0", "1.5.0", "1.11.0"}
HELPER_FROM = Version("1.1.0")  # the scaler comes from utils.modeling.get_grad_scaler
ACCELERATOR = "src/accelerate/accelerator.py"
MODELING = "src/accelerate/utils/modeling.py"
FILES = (ACCELERATOR, MODELING)


def shipped(version: str) -> Path:
    return ROOT / "patches" / f"accelerate-{version}-tpu.diff"


def patch_for(release: str) -> Path:
    return shipped(max((v for v in SHIPPED if Version(v) <= Version(release)), key=Version))


def cache() -> Path:
    base = os.environ.get("SD_ENV_TEST_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "sd-env-tests") / "sdists"


@pytest.fixture(scope="session")
def archives() -> dict[str, Path]:
    """release -> its PyPI sdist (the wheel for 0.24.0), downloaded once per machine."""
    where = cache()
    where.mkdir(parents=True, exist_ok=True)
    found = {}
    for release in RELEASES:
        if release in GIT_ONLY:
            continue
        name = f"accelerate-{release}" + ("-py3-none-any.whl" if release in NO_SDIST else ".tar.gz")
        if not (where / name).is_file():
            kind = ["--only-binary", ":all:"] if release in NO_SDIST else ["--no-binary", ":all:"]
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                            "--no-deps", *kind, "-d", str(where), f"accelerate=={release}"], check=True, timeout=600)
        found[release] = where / name
    return found


def release_files(archive: Path) -> dict[str, bytes]:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as whl:
            return {f: whl.read(f[len("src/"):]) for f in FILES}
    with tarfile.open(archive) as tar:
        out = {}
        for f in FILES:
            member = tar.extractfile(f"{archive.name[:-len('.tar.gz')]}/{f}")
            assert member is not None
            out[f] = member.read()
        return out


def git_files(prefix: Path, release: str) -> dict[str, bytes]:
    repo = prefix / "huggingface" / "accelerate.git"
    return {f: subprocess.run(["git", "--git-dir", str(repo), "show", f"v{release}:{f}"], capture_output=True,
                              check=True).stdout for f in FILES}


@pytest.fixture(scope="session")
def sources(archives) -> dict[str, dict[str, bytes]]:
    """release -> its files: from PyPI, or from the git history for the releases PyPI lacks (absent without)."""
    history = upstream_history("accelerate", "v1.14.0")
    out = {r: release_files(a) for r, a in archives.items()}
    if history is not None:
        out.update({r: git_files(history, r) for r in sorted(GIT_ONLY)})
    return out


def needs(sources: dict, releases: list[str]) -> None:
    missing = [r for r in releases if r not in sources]
    if missing:
        pytest.skip(no_history("accelerate", "v" + missing[-1]) + f" ({', '.join(missing)} are not on PyPI)")


def repo_of(where: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    git(where, "init", "-q")
    git(where, "add", "-A")
    subprocess.run(["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "up"],
                   check=True)
    return where


def fits(repo: Path, patch: Path) -> bool:
    return subprocess.run(["git", "-C", str(repo), "apply", "--check", str(patch)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("which", ["pypi", "git-only"])
def test_each_shipped_patch_fits_exactly_its_releases(sources, tmp_path, which):
    releases = [r for r in RELEASES if (r in GIT_ONLY) == (which == "git-only")]
    needs(sources, releases)
    rungs = sorted(SHIPPED, key=Version)
    table = {}
    for release in releases:
        repo = repo_of(tmp_path / release, sources[release])
        table[release] = [v for v in rungs if fits(repo, shipped(v))]
        assert patch_for(release).name in [shipped(v).name for v in table[release]], \
            f"{patch_for(release).name} does not apply to {release}"
    for earlier, first in zip(rungs, rungs[1:]):
        if first in table:  # each port exists because the one before it no longer applies to its first release
            assert earlier not in table[first], f"accelerate-{first}-tpu.diff is not needed: {earlier}'s fits"
    for v in rungs:
        patch = patches.load(shipped(v))
        for key in ("Description", "Origin", "Upstream-Version", "Forwarded", "Last-Update"):
            assert patch.header.get(key), f"{patch.name}: no {key} in its header"
        assert f"v{v}" in patch.header["Upstream-Version"]


def test_every_shipped_port_changes_what_the_device_needs():
    """The same change on every rung: guarded import, "tpu" in the fp16 check, the torch_tpu scaler (in
    accelerator.py up to 1.0.x; in utils/modeling.py's get_grad_scaler from 1.1.0)."""
    for v in SHIPPED:
        patch = patches.load(shipped(v))
        added = {c.path: [line[1:].strip() for line in _file_diff(patch.text, c.path).splitlines()
                          if line.startswith("+") and not line.startswith("+++")] for c in patch.files}
        everything = [line for lines in added.values() for line in lines]
        assert "import torch_tpu" in everything and "torch_tpu = None" in everything, v
        assert any(line.endswith("torch_tpu.tpu.amp.GradScaler(**kwargs)") for line in everything), v
        if Version(v) >= HELPER_FROM:
            assert sorted(added) == sorted(FILES), v
            assert "return torch_tpu.tpu.amp.GradScaler(**kwargs)" in added[MODELING], v
            assert any('"tpu"' in line for line in added[ACCELERATOR]), v
        elif Version(v) >= Version("0.20.0"):
            assert any(line.startswith("if self.device.type not in (") and '"tpu")' in line for line in everything), v


def _file_diff(text: str, path: str) -> str:
    at = text.index(f"diff --git a/{path} ")
    end = text.find("\ndiff --git", at + 1)
    return text[at:] if end < 0 else text[at:end]


def _ported(tmp_path: Path, sources, release: str, patch: patches.Patch, hint: str) -> tuple[Path, port.PortResult]:
    """`patch` taken to `release` the way `sd-env repatch` chooses (ladder.choose), with the pre-image of
    the release `hint` names (the old checkout's blobs)."""
    old = repo_of(tmp_path / f"old-{hint}-{release}", sources[hint])
    work = repo_of(tmp_path / f"{release}-from-{hint}", sources[release])
    runner = Runner()
    choice = ladder.choose(runner, work, patch, hint, release,
                           lambda p: port.port(runner, work, p, blobs_from=old))
    return work, choice.result


def _whole(tmp_path: Path, sources, release: str, work: Path) -> None:
    """Exactly the release plus its rung's patch, nothing half-merged."""
    expected = repo_of(Path(tempfile.mkdtemp(prefix=f"expected-{release}-", dir=tmp_path)), sources[release])
    git(expected, "apply", str(patch_for(release)))
    for f in FILES:
        assert (work / f).read_bytes() == (expected / f).read_bytes(), (release, f)


def test_a_direct_jump_from_0160_ends_on_the_rungs_port(sources, tmp_path):
    """What `repatch --to` does from the default manifest straight to each release (the heavy test walks
    the ladder step by step): the plain port of the 0.16.0 patch where it fits, else the rung's port."""
    original = patches.load(shipped("0.16.0"))
    for release in [r for r in RELEASES[1:] if r in sources]:
        work, got = _ported(tmp_path, sources, release, original, "0.16.0")
        if Version(release) < Version("0.20.0"):
            assert got.method in (port.EXACT, port.OFFSET), (release, got.detail)
        else:
            assert got.method == port.SHIPPED and patch_for(release).name in got.detail, (release, got.detail)
        _whole(tmp_path, sources, release, work)


def test_a_chain_of_jumps_between_rungs_ends_on_each_rungs_port(sources, tmp_path):
    """0.16.0 -> 0.22.0 -> 0.27.2 -> 0.30.1 -> 1.10.1 -> 0.16.0, each jump starting from the file the one
    before ended on (0.22.0 holds accelerate-0.21.0-tpu.diff, whose pre-image 0.22.0 lacks)."""
    at, patch = "0.16.0", patches.load(shipped("0.16.0"))
    for release in ("0.22.0", "0.27.2", "0.30.1", "1.10.1", "0.16.0"):
        work, got = _ported(tmp_path, sources, release, patch, at)
        assert got.method == port.SHIPPED and f"took the shipped port {patch_for(release).name}" in got.detail, \
            (at, release, got.detail)
        _whole(tmp_path, sources, release, work)
        at, patch = release, patches.load(patch_for(release))
