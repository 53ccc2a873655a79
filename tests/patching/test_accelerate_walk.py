"""The accelerate ladder on real installs: `sd-env repatch --to` from release to release, each stop
patched (never half) and proven on the emulated tpu (repatch's own proof row: an fp16 Accelerator on
tpu:0 gets torch_tpu's GradScaler, trains 2 steps and skips the step with an injected inf).

- a chain of jumps between rungs (0.16.0 -> 0.22.0 -> 0.27.2 -> 0.30.1 -> back to the pin);
- a jump past the ladder (the shipped ports only up to 0.30.0, 0.20.0 -> 1.0.1) starts from the
  nearest rung, stops on the conflict its 3-way merge leaves, and after the user's fix is proven;
- heavy: the whole ladder 0.16.0 -> 1.14.0, one release at a time, on Python 3.10 + torch 2.1.0 (the
  py310 stack's lock; accelerate 1.14.0 needs Python 3.10), and the unpatched first rungs refusing fp16;
  1.10.0 imports torch.distributed.device_mesh (torch >= 2.2): its proof fails there, as expected;
- heavy: the torch 2.8 era (the SD 1.5 stack's Python 3.11, torch 2.8.0 and lock, the emulated torch_tpu
  2.8 with the strict profile that stack names): from its 0.30.1 to every later release and back, 1.10.0
  proven there.

accelerate 0.32.0 on imports `split_torch_state_dict_into_shards` (huggingface_hub >= 0.23) and 1.0.0
on wants safetensors >= 0.4.3, newer than the 2023 era lock's 0.16.4 and 0.3.3: the targets that go
past 0.31.0 get huggingface_hub 0.25.2 and safetensors 0.4.5 on top (the newest hub that still has
`cached_download`, which diffusers 0.20.0 imports). Sources: the PyPI sdists of the cache of
test_accelerate_ladder.py (the sdist fallback, no index), or git through a mirror with accelerate's
history ($SD_ENV_TEST_UPSTREAM_HISTORY), which also has the releases PyPI lacks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from packaging.version import Version

from sd_env.cli import main
from sd_env.core import manifest as sd_manifest
from sd_env.patching import patches
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.target.closure import find_uv
from sd_env.verify import emulation
from tests.conftest import ROOT, run_in
from tests.patching.conftest import no_history, one_component_manifest, upstream_history
from tests.patching.test_accelerate_ladder import GIT_ONLY, NO_SDIST, RELEASES, SHIPPED, archives, cache, patch_for  # noqa: F401
from tests.verify.test_real_accelerate import torch_python, torch_venv  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.network]

COMMIT_0160 = "36beea9a1be9251a3ad07f7c10fd425c96954f46"
NEWER = ["huggingface_hub==0.25.2", "safetensors==0.4.5"]  # what accelerate >= 0.32.0 / 1.0.0 import
CLAIM = "an fp16 Accelerator on tpu:0 gets torch_tpu's GradScaler"
PY310_LOCK = ROOT / "manifests" / "sc7-sd14-lora-py310.pypi.lock.txt"
SD15_LOCK = ROOT / "manifests" / "sc7-sd15-lora.pypi.lock.txt"
SD15_PIN = "0.30.1"  # the SD 1.5 stack's accelerate: where the torch 2.8 walk starts and ends
STRICT_28 = "torch_tpu-2.8"  # the profile the SD 1.5 stack names: its plugin refuses int64 on the device
# Releases that do not import with torch 2.1 (what they need first appeared in torch 2.2): proven under 2.8.
SAYS = {"0.32.1": "0.32.0"}  # the tag's __version__, where upstream did not bump it (the sdist says 0.32.1)
NEEDS_NEWER_TORCH = {"1.10.0": "No module named 'torch.distributed.device_mesh'"}


def layered(base: Path, where: Path, extra: list[str] | None = None) -> Path:
    """A venv that sees `base`'s packages through a .pth file, with its own site (and `extra` in it)."""
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    Path(run_in(python, purelib), "_sd_env_test_torch.pth").write_text(run_in(base, purelib) + "\n")
    if extra:
        uv = find_uv()
        assert uv, "uv is needed to add packages to the layered target"
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "--no-deps", *extra], check=True,
                       timeout=600)
    return python


def project(tmp_path: Path, python: str, version: str = "0.16.0", upto: str | None = None,
            git: bool = False, torch: str = "2.1.0", profile: str | None = None) -> Path:
    """A manifest of accelerate at `version` with its rung's patch, and a copy of the shipped ports (up to
    `upto`) beside it, where repatch writes. From git (through a mirror) or, git unreachable, the sdist."""
    ports = [p for p in (ROOT / "patches").glob("accelerate-*-tpu.diff")
             if upto is None or Version(p.name[len("accelerate-"):-len("-tpu.diff")]) <= Version(upto)]
    url = None if git else (tmp_path / "unreachable" / "accelerate.git").as_uri()  # git fails: the sdist
    return one_component_manifest(tmp_path, ports, "accelerate", version, patch_for(version).name, python=python,
                                  git_url=url, commit=COMMIT_0160 if version == "0.16.0" else None, torch=torch,
                                  profile=profile)


def seed_emulator(home: Path, emu: emulation.Emulator) -> None:
    """The session's emulator build in this home's cache: repatch's proof finds it when the target has
    the same torch and Python (else it builds its own, about half a minute)."""
    dest = Paths(home).emulators / emu.key
    if not dest.exists():
        shutil.copytree(emu.pythonpath, dest, symlinks=True)


class Walker:
    """`sd-env ... --json` on one home; each repatch's port and proof rows."""

    def __init__(self, manifest: Path, home: Path, python: Path, capsys, mirror: Path | None = None,
                 era: str = "2.1", profile: str | None = None) -> None:
        self.common = ["-m", str(manifest), "--home", str(home), "--python", str(python), "--json"]
        if mirror is not None:
            self.common += ["--git-mirror", str(mirror)]
        self.manifest, self.home, self.capsys = manifest, home, capsys
        self.newer_torch = NEEDS_NEWER_TORCH if era == "2.1" else {}  # what the target's torch cannot import
        self.proven = f"ported and proven (emulated{f', strict profile {profile}' if profile else ''}): {CLAIM}"

    def run(self, *args: str) -> tuple[int, dict, str]:
        self.capsys.readouterr()
        code = main([args[0], *self.common, *args[1:]])
        out = self.capsys.readouterr()
        return code, json.loads(out.out), out.err

    def repatch(self, release: str) -> tuple[str, str]:
        """--to `release`, which must end ported, installed and proven: the port's and the proof's details.
        A release that needs a newer torch than the target's ends ported and installed, its proof failing
        on that import (it is proven in the torch 2.8 era)."""
        code, doc, err = self.run("repatch", "--to", f"accelerate=={release}")
        rows = {r["step"]: r for r in doc["results"]}
        if release in self.newer_torch and "proof" in rows:
            assert code == 1 and rows["finish"]["status"] == "ok", (release, rows)
            assert self.newer_torch[release] in rows["proof"]["detail"], (release, rows["proof"])
        else:
            assert code == 0, f"repatch --to {release}:\n{json.dumps(doc, indent=1)[-4000:]}\n{err[-3000:]}"
            assert rows["proof"]["status"] == "ok" and rows["proof"]["detail"].startswith(self.proven), \
                (release, rows["proof"])
        self.assert_applied(release)
        return rows["port"]["detail"], rows["proof"]["detail"]

    def assert_applied(self, release: str) -> None:
        """Never half-patched: the checkout is exactly upstream + the series the manifest now names."""
        comp = sd_manifest.load(self.manifest).component("accelerate")
        assert comp.version == release
        checkout = self.home / "src" / "accelerate"
        state = patches.observe(Runner(), checkout, [patches.load(p) for p in comp.patches])
        assert state.kind == "applied", (release, state)
        assert not (self.home / "repatch" / "session.json").exists()


def test_a_chain_of_jumps_ends_patched_and_proven_at_each_stop(tmp_path, torch_python, emulator, capsys,  # noqa: F811
                                                                monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", str(cache()))  # the sdist fallback: from the cache, no index
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    target = layered(torch_python, tmp_path / "venv")
    walker = Walker(project(tmp_path, "3.9"), tmp_path / "home", target, capsys)
    assert walker.run("install")[0] == 0
    seed_emulator(walker.home, emulator)
    for release in ("0.22.0", "0.27.2", "0.30.1", "0.16.0"):
        ported, _proof = walker.repatch(release)
        assert f": shipped (took the shipped port {patch_for(release).name} (" in ported, (release, ported)
        assert [p.name for p in sd_manifest.load(walker.manifest).component("accelerate").patches] == \
            [patch_for(release).name]
    assert sorted(p.name for p in (tmp_path / "patches").iterdir()) == \
        sorted(p.name for p in (ROOT / "patches").glob("accelerate-*-tpu.diff")), "no port was written"


def test_a_jump_past_the_ladder_starts_from_the_nearest_rung(tmp_path, torch_python, emulator, capsys,  # noqa: F811
                                                             monkeypatch):
    """With the shipped ports only up to 0.30.0 (the ladder before 1.x), 0.20.0 -> 1.0.1 starts from
    accelerate-0.30.0-tpu.diff, merges it 3-way from 0.30.0's pre-image (fetched for this) and stops on
    the one line upstream changed too (the fp16 device list gained "musa"); the user's fix is proven."""
    monkeypatch.setenv("PIP_FIND_LINKS", str(cache()))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    target = layered(torch_python, tmp_path / "venv", NEWER)
    walker = Walker(project(tmp_path, "3.9", version="0.20.0", upto="0.30.0"), tmp_path / "home", target, capsys)
    assert walker.run("install")[0] == 0
    seed_emulator(walker.home, emulator)
    code, doc, err = walker.run("repatch", "--to", "accelerate==1.0.1")
    assert code == 1, err
    detail = [r for r in doc["results"] if r["step"] == "port"][-1]["detail"]
    assert detail.startswith("accelerate-0.20.0-tpu.diff: started from accelerate-0.30.0-tpu.diff, the nearest "
                             "shipped port below 1.0.1; 3-way merge left conflict markers in "
                             "src/accelerate/accelerator.py"), detail
    assert "fetching accelerate v0.30.0 for the pre-image of accelerate-0.30.0-tpu.diff" in err
    work = walker.home / "repatch" / "accelerate-1.0.1" / "src" / "accelerate" / "accelerator.py"
    work.write_text(resolve_device_list(work.read_text()))
    # The device list line is not the one the 0.30.0 port adds (it has "musa" too): accepted on purpose.
    code, doc, err = walker.run("repatch", "--continue", "--accept")
    assert code == 0, err[-3000:]
    rows = {r["step"]: r for r in doc["results"]}
    assert rows["proof"]["detail"].startswith(walker.proven), rows["proof"]
    new = tmp_path / "patches" / "accelerate-1.0.1-tpu.diff"
    assert patches.load(new).header["Ported-From"] == "accelerate-0.30.0-tpu.diff (manual, by sd-env repatch)"
    walker.assert_applied("1.0.1")
    # The fix made by hand is the change of the shipped 1.0.0 port: the same lines (the 3-way merge puts
    # the guarded import block after upstream's new imports, the shipped port before them).
    expected = tmp_path / "expected"
    with tarfile.open(cache() / "accelerate-1.0.1.tar.gz") as tar:
        tar.extractall(expected)
    subprocess.run(["git", "apply", str(ROOT / "patches" / "accelerate-1.0.0-tpu.diff")], check=True,
                   cwd=expected / "accelerate-1.0.1", env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    got = (walker.home / "src" / "accelerate" / "src" / "accelerate" / "accelerator.py").read_text()
    want = (expected / "accelerate-1.0.1" / "src" / "accelerate" / "accelerator.py").read_text()
    assert sorted(got.splitlines()) == sorted(want.splitlines())
    block = want[want.index("# sd-env: Sophgo's torch_tpu"):want.index("    torch_tpu = None\n")]
    assert block in got


def resolve_device_list(text: str) -> str:
    """What the user does: keep upstream's side of the conflict and add "tpu" to its device list."""
    def fix(match: re.Match) -> str:
        ours = match.group(1)
        return re.sub(r'(if self\.device\.type not in \([^)]*)\)', r'\1, "tpu")', ours, count=1)
    fixed, n = re.subn(r"^<<<<<<< [^\n]*\n(.*?)^=======\n.*?^>>>>>>> [^\n]*\n", fix, text, flags=re.S | re.M)
    assert n == 1 and '"tpu")' in fixed, text
    return fixed


def walk_source() -> tuple[Path | None, list[str]]:
    """The git mirror with accelerate's history and every release, else None and the releases on PyPI."""
    history = upstream_history("accelerate", "v1.14.0")
    if history is not None:
        return history, RELEASES
    return None, [r for r in RELEASES if r not in NO_SDIST | GIT_ONLY]


@pytest.mark.heavy
def test_repatch_walks_the_whole_ladder(tmp_path, archives, capsys, monkeypatch):  # noqa: F811
    history, releases = walk_source()
    if history is None:
        print(no_history("accelerate", "v1.14.0") + ": walking the releases on PyPI only")
        monkeypatch.setenv("PIP_FIND_LINKS", str(cache()))
        monkeypatch.setenv("PIP_NO_INDEX", "1")
    target = layered(torch_venv("3.10", PY310_LOCK), tmp_path / "venv", NEWER)
    walker = Walker(project(tmp_path, "3.10", git=history is not None), tmp_path / "home", target, capsys,
                    mirror=history)
    assert walker.run("install")[0] == 0
    checkout = walker.home / "src" / "accelerate"
    trees = tmp_path / "trees"
    shutil.copytree(checkout / "src", trees / "0.16.0")
    table = {"0.16.0": ("accelerate-0.16.0-tpu.diff: installed", "")}
    for release in releases[1:]:
        table[release] = walker.repatch(release)
        shutil.copytree(checkout / "src", trees / release)
    check_walk(table, "0.16.0", capsys)
    # The unpatched first release of each rung, as a check that can fail, and every patched tree, in one probe.
    upstream = tmp_path / "upstream"
    for first in SHIPPED:
        if history is not None or first not in GIT_ONLY:
            release_tree(upstream / first, first, history, archives)
    emu = emulation.build(Runner(), target, Paths(walker.home))  # built by the first proof: from its cache
    args = [f"{r}={trees / r}" for r in table if r not in NEEDS_NEWER_TORCH]
    args += [f"upstream-{v}={upstream / v / 'src'}" for v in SHIPPED if (upstream / v).exists()]
    probe = subprocess.run([str(target), str(ROOT / "tests" / "kit" / "accelerate_fp16_probe.py"), str(emu.pythonpath),
                            *args], capture_output=True, text=True, timeout=3600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    got = json.loads(probe.stdout.splitlines()[-1])
    for release in [r for r in table if r not in NEEDS_NEWER_TORCH]:
        row = got[release]
        assert row.get("accelerate") in (release, SAYS.get(release)), row
        assert row["file"].startswith(str(trees / release)), row
        assert row.get("device") == "tpu:0" and row.get("scaler") == "torch_tpu.tpu.amp.grad_scaler.GradScaler", row
        assert row.get("scaler_kwargs") == {"init_scale": 1024.0}, (release, row)
    for v in SHIPPED:
        if (upstream / v).exists():
            row = got[f"upstream-{v}"]
            assert row.get("error_type") == "ValueError" and "fp16 mixed precision requires a" in row["error"], row


def check_walk(table: dict[str, tuple[str, str]], start: str, capsys) -> None:
    """Print the walk's table (past the capture of the walker's output: `pytest -s` shows it); each new rung
    took its shipped port, named for it; within a rung the plain port of the previous release's patch fitted."""
    with capsys.disabled():
        for release, (ported, proof) in table.items():
            print(f"{release:8} | {ported} | {proof.split(': ')[0]}")
    for release, (ported, _proof) in table.items():
        if release in SHIPPED - {start}:
            assert f"shipped (took the shipped port {patch_for(release).name}" in ported, (release, ported)
        elif release != start:
            assert re.search(r": (exact|offset) \(", ported), (release, ported)


def release_tree(where: Path, release: str, history: Path | None, archives: dict[str, Path]) -> Path:  # noqa: F811
    """Upstream's `release` unpacked in `where` (its src/ at least): from PyPI, else from the git history."""
    where.mkdir(parents=True)
    if release in archives and archives[release].name.endswith(".tar.gz"):
        with tarfile.open(archives[release]) as tar:
            tar.extractall(where.parent / "unpacked")
        shutil.rmtree(where)
        (where.parent / "unpacked" / f"accelerate-{release}").rename(where)
    else:
        assert history is not None, release
        subprocess.run(f"git --git-dir {history}/huggingface/accelerate.git archive v{release} src | tar -x -C {where}",
                       shell=True, check=True)
    return where


@pytest.mark.heavy
def test_the_torch_28_era_walk(tmp_path, archives, capsys, monkeypatch):  # noqa: F811
    """The SD 1.5 stack's era: Python 3.11, torch 2.8.0 and that stack's lock, the emulated torch_tpu 2.8 with
    the strict profile the stack names. From its accelerate 0.30.1 (accelerate-0.30.0-tpu.diff) repatch --to
    every later release, 1.10.0 among them (it needs torch >= 2.2), and back to 0.30.1: each stop patched
    and proven by repatch's own proof row on that device."""
    history, releases = walk_source()
    if history is None:
        print(no_history("accelerate", "v1.14.0") + ": walking the releases on PyPI only")
        monkeypatch.setenv("PIP_FIND_LINKS", str(cache()))
        monkeypatch.setenv("PIP_NO_INDEX", "1")
    target = layered(torch_venv("3.11", SD15_LOCK, torch="2.8.0"), tmp_path / "venv")
    manifest = project(tmp_path, "3.11", version=SD15_PIN, git=history is not None, torch="2.8.0",
                       profile=STRICT_28)
    walker = Walker(manifest, tmp_path / "home", target, capsys, mirror=history, era="2.8", profile=STRICT_28)
    assert walker.run("install")[0] == 0
    table = {SD15_PIN: (f"{patch_for(SD15_PIN).name}: installed", "")}
    for release in [r for r in releases if Version(r) > Version(SD15_PIN)]:
        table[release] = walker.repatch(release)
    assert set(NEEDS_NEWER_TORCH) <= set(table), "the releases torch 2.1 cannot prove are proven here"
    check_walk(table, SD15_PIN, capsys)
    back, _proof = walker.repatch(SD15_PIN)  # the pin again: the rung's shipped port, no new file
    assert f"shipped (took the shipped port {patch_for(SD15_PIN).name}" in back, back
    assert [p.name for p in sd_manifest.load(manifest).component("accelerate").patches] == \
        [patch_for(SD15_PIN).name]
