"""The accelerate ladder: our TPU patch for every release from 0.16.0 to 0.30.1.

The releases' own code comes from PyPI (sdists; for 0.24.0, which has no sdist,
the wheel's accelerator.py), downloaded once into $SD_ENV_TEST_CACHE/sdists
(default ~/.cache/sd-env-tests/sdists). Fast: each shipped patch fits exactly
the releases it is shipped for. Slow: `sd-env repatch --to` walks the whole
ladder on a real install, each step ends patched (never half), and every
release's Accelerator(mixed_precision="fp16") on "tpu:0" takes torch_tpu's
GradScaler (the unpatched releases refuse), all in one forking probe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from sd_env import ladder, patches, port
from sd_env import manifest as sd_manifest
from sd_env.cli import main
from sd_env.runner import Runner
from tests.conftest import ROOT, git
from tests.test_real_accelerate import accelerate_manifest, target, torch_python  # noqa: F401

pytestmark = pytest.mark.network

RELEASES = ["0.16.0", "0.17.0", "0.17.1", "0.18.0", "0.19.0", "0.20.0", "0.20.1", "0.20.2", "0.20.3", "0.21.0",
            "0.22.0", "0.23.0", "0.24.0", "0.24.1", "0.25.0", "0.26.0", "0.26.1", "0.27.0", "0.27.1", "0.27.2",
            "0.28.0", "0.29.0", "0.29.1", "0.29.2", "0.29.3", "0.30.0", "0.30.1"]
NO_SDIST = {"0.24.0"}  # PyPI has only a wheel: sd-env's sdist fallback cannot fetch it (git can)
# The shipped patch each release takes: the first release it fits is in its name.
SHIPPED = {"0.16.0": "0.16.0", "0.20.0": "0.20.0", "0.21.0": "0.21.0", "0.23.0": "0.23.0", "0.25.0": "0.25.0",
           "0.28.0": "0.28.0", "0.29.0": "0.29.0", "0.30.0": "0.30.0"}
FILE = "src/accelerate/accelerator.py"


def patch_for(release: str) -> Path:
    first = max((v for v in SHIPPED if Version(v) <= Version(release)), key=Version)
    return ROOT / "patches" / f"accelerate-{first}-tpu.diff"


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
        name = f"accelerate-{release}" + ("-py3-none-any.whl" if release in NO_SDIST else ".tar.gz")
        if not (where / name).is_file():
            kind = ["--only-binary", ":all:"] if release in NO_SDIST else ["--no-binary", ":all:"]
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                            "--no-deps", *kind, "-d", str(where), f"accelerate=={release}"], check=True, timeout=600)
        found[release] = where / name
    return found


def accelerator_py(archive: Path) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as whl:
            return whl.read("accelerate/accelerator.py")
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"{archive.name[:-len('.tar.gz')]}/{FILE}")
        assert member is not None
        return member.read()


def fits(repo: Path, patch: Path) -> bool:
    return subprocess.run(["git", "-C", str(repo), "apply", "--check", str(patch)],
                          capture_output=True).returncode == 0


def test_each_shipped_patch_fits_exactly_its_releases(archives, tmp_path):
    repo = tmp_path / "accelerate"
    (repo / FILE).parent.mkdir(parents=True)
    git(repo, "init", "-q")
    shipped = sorted(SHIPPED, key=Version)
    table = {}
    for release in RELEASES:
        (repo / FILE).write_bytes(accelerator_py(archives[release]))
        table[release] = [v for v in shipped if fits(repo, ROOT / "patches" / f"accelerate-{v}-tpu.diff")]
    for release, fitting in table.items():
        own = patch_for(release).name
        assert own in [f"accelerate-{v}-tpu.diff" for v in fitting], f"{own} does not apply to {release}"
    for earlier, first in zip(shipped, shipped[1:]):
        # Each port exists because the one before it no longer applies to its first release.
        assert earlier not in table[first], f"accelerate-{first}-tpu.diff is not needed: {earlier}'s fits"
    for v in shipped:
        patch = patches.load(ROOT / "patches" / f"accelerate-{v}-tpu.diff")
        for key in ("Description", "Origin", "Upstream-Version", "Forwarded", "Last-Update"):
            assert patch.header.get(key), f"{patch.name}: no {key} in its header"
        assert f"v{v}" in patch.header["Upstream-Version"]


def test_every_shipped_port_changes_what_the_device_needs():
    """The same change on every rung: guarded import, "tpu" in the fp16 check, the torch_tpu scaler."""
    for v in SHIPPED:
        text = (ROOT / "patches" / f"accelerate-{v}-tpu.diff").read_text()
        added = [line[1:].strip() for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
        assert "import torch_tpu" in added and "torch_tpu = None" in added, v
        assert "self.scaler = torch_tpu.tpu.amp.GradScaler(**kwargs)" in added, v
        if Version(v) >= Version("0.20.0"):
            assert any(line.startswith("if self.device.type not in (") and '"tpu")' in line for line in added), v


def one_file_repo(where: Path, text: bytes) -> Path:
    (where / FILE).parent.mkdir(parents=True)
    (where / FILE).write_bytes(text)
    git(where, "init", "-q")
    git(where, "add", "-A")
    subprocess.run(["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "up"],
                   check=True)
    return where


def test_a_direct_jump_from_0160_ends_on_the_rungs_port(archives, tmp_path):
    """What `repatch --to` does from the default manifest straight to each release (the slow test walks the
    ladder step by step): the plain port of the 0.16.0 patch where it fits, else the shipped port, whole."""
    old = one_file_repo(tmp_path / "0.16.0", accelerator_py(archives["0.16.0"]))
    original = patches.load(ROOT / "patches" / "accelerate-0.16.0-tpu.diff")
    runner = Runner()
    for release in RELEASES[1:]:
        work = one_file_repo(tmp_path / release, accelerator_py(archives[release]))
        got = port.port(runner, work, original, blobs_from=old)
        if got.method == port.CONFLICT:
            got = ladder.take_shipped(runner, work, ladder.candidates(original.path, "0.16.0", release)) or got
        if Version(release) < Version("0.20.0"):
            assert got.method in (port.EXACT, port.OFFSET), (release, got.detail)
        else:
            assert got.method == port.SHIPPED and patch_for(release).name in got.detail, (release, got.detail)
        # Whole: exactly the release plus its rung's patch, nothing half-merged.
        expected = one_file_repo(tmp_path / f"expected-{release}", accelerator_py(archives[release]))
        git(expected, "apply", str(patch_for(release)))
        assert (work / FILE).read_bytes() == (expected / FILE).read_bytes(), release


def ladder_manifest(tmp_path: Path) -> Path:
    """accelerate 0.16.0 from its sdist, with a copy of the shipped patches (repatch writes next to them)."""
    path = accelerate_manifest(tmp_path)
    own = tmp_path / "patches"
    own.mkdir()
    for patch in (ROOT / "patches").glob("accelerate-*-tpu.diff"):
        shutil.copy(patch, own / patch.name)
    path.write_text(path.read_text().replace(f'patches_dir = "{ROOT / "patches"}"', f'patches_dir = "{own}"'))
    return path


@pytest.mark.slow
@pytest.mark.heavy
def test_repatch_walks_the_whole_ladder(tmp_path, target, archives, emulator, capsys, monkeypatch):  # noqa: F811
    # sd-env's sdist fallback downloads with the target's pip: from the cache only, no index.
    monkeypatch.setenv("PIP_FIND_LINKS", str(cache()))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    manifest, home = ladder_manifest(tmp_path), tmp_path / "home"
    common = ["-m", str(manifest), "--home", str(home), "--python", str(target), "--json"]
    assert main(["install", *common]) == 0, capsys.readouterr()
    checkout = home / "src" / "accelerate"
    trees = tmp_path / "trees"
    shutil.copytree(checkout / "src", trees / "0.16.0")
    methods = {}
    for release in RELEASES[1:]:
        if release in NO_SDIST:
            continue
        capsys.readouterr()
        code = main(["repatch", *common, "--to", f"accelerate=={release}"])
        out = capsys.readouterr()
        assert code == 0, f"repatch --to {release}:\n{out.out}\n{out.err}"
        ports = [r["detail"] for r in json.loads(out.out)["results"] if r["step"] == "port"]
        methods[release] = ports[0]
        assert not (home / "repatch" / "session.json").exists()
        # Never half-patched: the checkout is exactly upstream + the series the manifest now names.
        series = sd_manifest.load(manifest).component("accelerate").patches
        state = patches.observe(Runner(), checkout, [patches.load(p) for p in series])
        assert state.kind == "applied", (release, state)
        shutil.copytree(checkout / "src", trees / release)
    for release, detail in methods.items():
        if release in SHIPPED:  # a new rung: its shipped port, named for it, is taken and named
            assert f"shipped (took the shipped port {patch_for(release).name}" in detail, (release, detail)
        else:  # within a rung the plain port of the previous release's patch fits
            assert "shipped" not in detail and ": conflict" not in detail, (release, detail)
    # The unpatched first release of each rung, as a check that can fail.
    upstream = tmp_path / "upstream"
    for first in SHIPPED:
        with tarfile.open(archives[first]) as tar:
            tar.extractall(upstream)
    args = [f"{r}={trees / r}" for r in sorted(os.listdir(trees), key=Version)]
    args += [f"upstream-{v}={upstream / f'accelerate-{v}' / 'src'}" for v in SHIPPED]
    probe = subprocess.run([str(target), str(ROOT / "tests" / "accelerate_fp16_probe.py"), str(emulator.pythonpath),
                            *args], capture_output=True, text=True, timeout=1800)
    assert probe.returncode == 0, probe.stderr[-3000:]
    got = json.loads(probe.stdout.splitlines()[-1])
    for release in [r for r in RELEASES if r not in NO_SDIST]:
        row = got[release]
        assert row.get("accelerate") == release and row["file"].startswith(str(trees / release)), row
        scaler = row.get("scaler") or ""
        assert row.get("device") == "tpu:0" and scaler.startswith("torch_tpu.tpu.amp.") and \
            scaler.endswith(".GradScaler"), (release, row)
        assert row.get("scaler_kwargs") == {"init_scale": 1024.0}, (release, row)
    for v in SHIPPED:
        row = got[f"upstream-{v}"]
        assert row.get("error_type") == "ValueError" and "fp16 mixed precision requires a GPU" in row["error"], row
