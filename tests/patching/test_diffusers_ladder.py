"""The diffusers LoRA example ladder, 0.20.0 to 0.40.0: text, verdicts and proofs on the emulated tpu.

The example exists only in diffusers' git history: every test here needs a git mirror with its tags
($SD_ENV_TEST_UPSTREAM_HISTORY, see conftest.upstream_history) and says skipped without one.

- text: from the pin's patch, each release ends on the port `sd-env repatch` would choose (ladder.choose):
  the pin's patch (exact, 3-way), a shipped port, or the SD 1.5 stack's port merged 3-way; without the
  shipped ports, the hunk whose target text is gone is named instead of a bare conflict;
- proofs (slow: one release of each rung; heavy: every distinct example up to 0.31.x, the last that
  runs on torch 2.1): the ported example trains 2 fp32 steps on "tpu" (its LoRA weights move); without
  the placement hunk it still trains (0.25.0 on: dropped, no longer needed) or it does not (up to 0.24.x:
  still needed); without the `import torch_tpu` hunk and with an upstream accelerate it stops at
  Accelerator() on "tpu:0" (still needed on every release);
- repatch: 0.24.0 -> 0.25.0 drops the placement hunk, proven; 0.22.0 -> 0.24.0 keeps it, proven needed.
Each release runs in an era overlay (tests/kit/eras.py): what its example imports, as PyPI had it two weeks
after the release, on the cached Python 3.9 + torch 2.1.0 venv; diffusers itself from the tag's source.
From 0.32.0 the library imports torch.uint1 (torch >= 2.3), and from 0.35.0 the era's transformers needs
torch >= 2.2: their proofs (heavy), and the SD 1.5 stack's 0.29.2 again, run in the torch 2.8 era: the
SD 1.5 stack's Python 3.11 + torch 2.8.0 venv, the emulated torch_tpu 2.8 with the strict profile that
stack names (int64 refused on the device: the ports from 0.29.2 draw int32 timesteps).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.version import Version
from unidiff import PatchSet

from sd_env.cli import main
from sd_env.core import manifest as sd_manifest
from sd_env.patching import ladder, patches, port
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import emulation, proof
from tests.conftest import ROOT, SD15_MANIFEST, git
from tests.kit import eras
from tests.patching.conftest import no_history, one_component_manifest, upstream_history
from tests.patching.test_accelerate_walk import SD15_LOCK
from tests.verify.test_real_accelerate import cache_dir, torch_python, torch_venv  # noqa: F401

EXAMPLE = "examples/text_to_image/train_text_to_image_lora.py"
PIN = ROOT / "patches" / "diffusers-0.20.0-train-lora.diff"
RUNGS = ("0.20.0", "0.22.0", "0.24.0", "0.25.0", "0.29.2")
# The last example that runs on torch 2.1: diffusers 0.32.0 imports torch.uint1 (torch >= 2.3) unguarded
# (quantizers/torchao), and from 0.35.0 the era's transformers needs torch >= 2.2.
TORCH_21_UNTIL = Version("0.31.99")
# The library's own imports (setup.py), beside the example's requirements.txt.
CORE = ["importlib_metadata", "filelock", "huggingface-hub", "numpy<2", "regex", "requests", "safetensors", "Pillow"]
DEVICE_STRING = "device type at start of device string: tpu"


def history() -> Path:
    prefix = upstream_history("diffusers", "v0.40.0")
    if prefix is None:
        pytest.skip(no_history("diffusers", "v0.40.0") + ": the example is not in diffusers' sdist")
    return prefix / "huggingface" / "diffusers.git"


def releases(repo: Path) -> list[str]:
    tags = subprocess.run(["git", "--git-dir", str(repo), "tag", "--list", "v0.*"], capture_output=True, text=True,
                          check=True).stdout.split()
    found = [t[1:] for t in tags if re.fullmatch(r"v0\.\d+\.\d+", t) and Version(t[1:]) >= Version("0.20.0")]
    return sorted(found, key=Version)


def rung(release: str) -> str:
    return max((r for r in RUNGS if Version(r) <= Version(release)), key=Version)


def shipped(version: str) -> Path:
    return ROOT / "patches" / f"diffusers-{version}-train-lora.diff"


def tree(repo: Path, release: str, where: Path, library: bool = False) -> Path:
    """The release's example (and its library's src/) in a new git repository."""
    where.mkdir(parents=True)
    paths = "src examples/text_to_image" if library else "examples/text_to_image"
    subprocess.run(f"git --git-dir {repo} archive v{release} {paths} | tar -x -C {where}", shell=True, check=True)
    git(where, "init", "-q")
    git(where, "add", "-A")
    subprocess.run(["git", "-C", str(where), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", release],
                   check=True)
    return where


def ported(repo: Path, release: str, where: Path, library: bool = False, pin: Path = PIN) -> port.PortResult:
    """`pin` taken to `release` as `sd-env repatch` chooses from 0.20.0 (pre-images from the history)."""
    work = tree(repo, release, where, library)
    runner = Runner()
    return ladder.choose(runner, work, patches.load(pin), "0.20.0", release,
                         lambda p: port.port(runner, work, p, blobs_from=repo)).result


def expected(release: str) -> tuple[str, str]:
    """How the pin's patch reaches `release`, and with which file."""
    first = rung(release)
    if first == "0.20.0":
        return ("exact" if Version(release) < Version("0.21.0") else "3-way"), PIN.name
    if first == "0.29.2" and release != "0.29.2":
        return "3-way", shipped("0.29.2").name  # started from the SD 1.5 stack's port, merged from its pre-image
    return "shipped", shipped(first).name


def test_every_release_ends_on_its_rung(tmp_path):
    repo = history()
    for release in releases(repo)[1:]:
        got = ported(repo, release, tmp_path / release)
        method, name = expected(release)
        assert got.method == method and got.patch.name == name, (release, got.method, got.patch.name, got.detail)


def test_without_the_shipped_ports_the_gone_hunk_is_named(tmp_path):
    """Only the pin's patch beside it: from 0.24.0 the AttnProcsLayers line it changes is gone; the import
    hunk still merges 3-way up to 0.28.x (then the verdict decides), and conflicts from 0.29.0 (the conflict
    names the gone hunk too). 0.22.x/0.23.x conflict on the import hunk alone: nothing is gone there."""
    repo = history()
    alone = tmp_path / "patches" / PIN.name
    alone.parent.mkdir()
    shutil.copy(PIN, alone)
    gone = f"hunk #2 of {EXAMPLE} (`lora_layers = AttnProcsLayers(unet.attn_processors)`)"
    for release in ("0.22.0", "0.23.1", "0.24.0", "0.25.0", "0.28.2", "0.29.2", "0.40.0"):
        got = ported(repo, release, tmp_path / release, pin=alone)
        if Version(release) < Version("0.24.0"):
            assert got.method == "conflict" and not got.gone, (release, got.detail)
        elif Version(release) < Version("0.29.0"):
            assert got.method == port.GONE and got.gone == [gone], (release, got.detail)
            assert got.detail.startswith("the rest: 3-way ("), got.detail
        else:
            assert got.method == "conflict" and got.detail.startswith(f"{gone}: target text gone from the new file; "
                                                                      "the rest: "), (release, got.detail)


# --- proofs on the emulated device ------------------------------------------------------------------------------


def era(repo: Path, release: str, base: Path) -> Path:
    """The release's example's packages as of two weeks after the release, over `base`."""
    def show(path: str) -> str:
        return subprocess.run(["git", "--git-dir", str(repo), "show", f"v{release}:{path}"], capture_output=True,
                              text=True, check=True).stdout
    wanted = [line.strip() for line in show("examples/text_to_image/requirements.txt").splitlines()
              if line.strip() and not line.startswith("#") and not line.startswith("torchvision")]
    # The example pins peft==0.7.0 long after its library asks for more (0.34.0: peft>=0.15): the era's peft.
    wanted = ["peft" if line.startswith("peft") else line for line in wanted]
    date = subprocess.run(["git", "--git-dir", str(repo), "log", "-1", "--format=%as", f"v{release}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    return eras.overlay(base, cache_dir().parent / "eras", f"diffusers-{release}", CORE + wanted,
                        datetime.date.fromisoformat(date) + datetime.timedelta(days=14))


@pytest.fixture(scope="session")
def tiny_home(torch_python, emulator, tmp_path_factory) -> Paths:  # noqa: F811
    """A home whose cache has the tiny model (built with the pin's diffusers) and the session's emulator."""
    repo = history()
    home = Paths(tmp_path_factory.mktemp("diffusers-proofs"))
    src = tree(repo, "0.20.0", tmp_path_factory.mktemp("diffusers-0.20.0") / "d", library=True)
    python = era(repo, "0.20.0", torch_python)
    built = subprocess.run([str(python), str(ROOT / "installer" / "sd_env" / "probes" / "tiny_sd.py"), "--out",
                            str(home.tiny_sd)], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "PYTHONPATH": str(src / "src"), "HF_HUB_OFFLINE": "1"})
    assert built.returncode == 0, built.stderr[-3000:]
    shutil.copytree(emulator.pythonpath, home.emulators / emulator.key, symlinks=True)
    return home


def apply_without(work: Path, patch: patches.Patch, keep, where: Path) -> None:
    """`patch` without the hunks `keep(added lines)` refuses, applied to `work` (from its HEAD)."""
    git(work, "checkout", "-q", "--", ".")
    parsed = PatchSet(patch.text)
    for pf in parsed:
        pf[:] = [h for h in pf if keep("".join(line.value for line in h if line.is_added))]
    kept = "".join(str(pf) for pf in parsed if len(pf))
    if kept:  # else: the release's example as it is
        where.write_text(patch.text.split("diff --git", 1)[0] + kept)
        git(work, "apply", "-3", str(where))  # the pin's patch reaches 0.21.x by a merge (its pre-image is there)
        git(work, "reset", "-q")


def run_example(python: Path, emu: emulation.Emulator, work: Path, home: Paths, out: Path,
                man: sd_manifest.Manifest | None = None) -> subprocess.CompletedProcess:
    setup = emulation.settings(man, emu) if man is not None else None
    env = {**os.environ, **emulation.environment(emu, setup=setup), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "ACCELERATE_TORCH_DEVICE": "tpu:0"}
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(work / "src")])
    return subprocess.run([str(python), str(work / EXAMPLE), "--pretrained_model_name_or_path",
                           str(home.tiny_sd / "model"), "--train_data_dir", str(home.tiny_sd / "data"),
                           "--resolution", "32", "--center_crop", "--train_batch_size", "1", "--max_train_steps", "2",
                           "--seed", "0", "--num_validation_images", "0", "--dataloader_num_workers", "0",
                           "--mixed_precision", "no", "--output_dir", str(out)], env=env, capture_output=True,
                          text=True, timeout=1800)


def prove_release(repo: Path, release: str, base: Path, home: Paths, emu: emulation.Emulator, tmp: Path,
                  man: sd_manifest.Manifest | None = None) -> dict:
    """The three proofs of one release (on the device `man`'s [emulator] sets up); what each found."""
    python = era(repo, release, base)
    got = ported(repo, release, tmp / "ported", library=True)
    assert got.ported, (release, got.detail)
    work = tmp / "ported"
    # 1. The port trains: 2 fp32 steps on "tpu", the LoRA weights move.
    verdict, evidence = proof.example(Runner(), python, home, work, work / "src", man)
    assert verdict == proof.OBSOLETE, (release, evidence)  # here: the ported example trains
    # 2. The placement fix (the hunk that moves the LoRA layers): what the example does without it.
    apply_without(work, got.patch, lambda added: ".to(accelerator.device)" not in added, tmp / "no-placement.diff")
    needed, why = proof.gone_hunks(Runner(), python, home, "diffusers", work, man)
    # 3. The import hunk: without it, with the era's upstream accelerate, "tpu:0" is not a device yet.
    apply_without(work, got.patch, lambda added: "import torch_tpu" not in added, tmp / "no-import.diff")
    stopped = run_example(python, emu, work, home, tmp / "no-import", man)
    assert stopped.returncode != 0 and DEVICE_STRING in stopped.stderr, (release, stopped.stderr[-2000:])
    return {"port": f"{got.method} ({got.patch.name})", "trains": evidence, "placement": (needed, why)}


def placement_expected(release: str) -> str:
    return proof.NEEDED if Version(release) < Version("0.25.0") else proof.OBSOLETE


def distinct_examples(repo: Path) -> list[str]:
    """The first release of each distinct example file."""
    seen, firsts = set(), []
    for release in releases(repo):
        blob = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", f"v{release}:{EXAMPLE}"],
                              capture_output=True, text=True, check=True).stdout.strip()
        if blob not in seen:
            seen.add(blob)
            firsts.append(release)
    return firsts


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("release", ["0.22.0", "0.24.0", "0.25.0", "0.29.2"])
def test_each_rungs_port_trains_and_its_hunks_are_decided(release, torch_python, tiny_home, emulator,  # noqa: F811
                                                          tmp_path):
    repo = history()
    found = prove_release(repo, release, torch_python, tiny_home, emulator, tmp_path)
    verdict, why = found["placement"]
    if Version(release) >= Version("0.29.2"):  # the SD 1.5 stack's port has no placement hunk to take out
        assert verdict == proof.OBSOLETE, why
    else:
        assert verdict == placement_expected(release), (release, why)
    if release == "0.24.0":
        assert "Expected all tensors to be on the same device" in why, why


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.network
def test_every_example_up_to_the_torch_21_era(torch_python, tiny_home, emulator, tmp_path):  # noqa: F811
    repo = history()
    table = {}
    for release in distinct_examples(repo):
        if Version(release) > TORCH_21_UNTIL:
            table[release] = {"port": expected(release), "proof": "in the torch 2.8 era (the test below)"}
            continue
        found = prove_release(repo, release, torch_python, tiny_home, emulator, tmp_path / release)
        if Version(release) < Version("0.29.2"):
            assert found["placement"][0] == placement_expected(release), (release, found)
        table[release] = found
    for release, found in table.items():
        print(f"{release:8} | {json.dumps(found)}")


# --- repatch: the verdict on a real install -------------------------------------------------------------------


def project(tmp_path: Path, version: str, ports: tuple[str, ...]) -> Path:
    return one_component_manifest(tmp_path, [shipped(v) for v in ports], "diffusers", version,
                                  shipped(ports[-1]).name)


def seeded(tmp_path: Path, tiny_home: Paths) -> Paths:
    """A new home with the tiny model and the emulator build of `tiny_home`."""
    home = Paths(tmp_path / "home")
    shutil.copytree(tiny_home.cache, home.cache)
    shutil.copytree(tiny_home.emulators, home.emulators, symlinks=True)
    return home


def repatch_to(tmp_path: Path, base: Path, home: Paths, start: str, ports: tuple[str, ...], to: str,
               capsys) -> tuple[int, dict, str, Path]:
    repo = history()
    python = era(repo, to, base)
    manifest = project(tmp_path, start, ports)
    common = ["-m", str(manifest), "--home", str(home.home), "--python", str(python), "--json",
              "--git-mirror", str(repo.parents[1])]
    capsys.readouterr()
    assert main(["install", *common]) == 0, capsys.readouterr()
    capsys.readouterr()
    code = main(["repatch", *common, "--to", f"diffusers=={to}"])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err, manifest


@pytest.mark.slow
@pytest.mark.network
def test_repatch_drops_the_placement_hunk_proven_obsolete(torch_python, tiny_home, tmp_path, capsys):  # noqa: F811
    """0.24.0 -> 0.25.0 with the ports up to 0.24.0 only: the placement hunk's target is gone, the example
    without it trains on the emulated tpu, so it is dropped; the port written is the shipped 0.25.0 one."""
    home = seeded(tmp_path, tiny_home)
    code, doc, err, manifest = repatch_to(tmp_path, torch_python, home, "0.24.0", ("0.20.0", "0.24.0"), "0.25.0",
                                          capsys)
    assert code == 0, err[-3000:]
    rows = {r["step"]: r for r in doc["results"]}
    detail = rows["port"]["detail"]
    assert detail.startswith("diffusers-0.24.0-train-lora.diff: hunk dropped as obsolete (hunk #2 of "
                             f"{EXAMPLE} (`# Accumulate the LoRA params to optimize.`): target text gone from the "
                             "new file; dropped: no longer needed (proven on the emulated device: without them its "
                             "LoRA weights moved"), detail
    assert rows["proof"]["status"] == "ok" and rows["proof"]["detail"].startswith(
        f"ported and proven (emulated): {proof.EXAMPLE_CLAIM}"), rows["proof"]
    new = tmp_path / "patches" / "diffusers-0.25.0-train-lora.diff"
    assert patches.load(new).header["Dropped"].startswith("hunk #2 of ")
    assert [p.name for p in sd_manifest.load(manifest).component("diffusers").patches] == [new.name]
    body = new.read_text()
    assert body[body.index("diff --git"):] == shipped("0.25.0").read_text()[shipped("0.25.0").read_text().index(
        "diff --git"):], "the verdict reaches what the shipped 0.25.0 port holds"


@pytest.mark.slow
@pytest.mark.network
def test_repatch_keeps_a_gone_hunk_that_is_still_needed(torch_python, tiny_home, tmp_path, capsys):  # noqa: F811
    """0.22.0 -> 0.24.0 with the ports up to 0.22.0 only: the AttnProcsLayers line is gone, but the example
    without the fix fails on two devices: a conflict that says so, nothing installed changed."""
    home = seeded(tmp_path, tiny_home)
    code, doc, err, manifest = repatch_to(tmp_path, torch_python, home, "0.22.0", ("0.20.0", "0.22.0"), "0.24.0",
                                          capsys)
    assert code == 1, err[-3000:]
    detail = [r for r in doc["results"] if r["step"] == "port"][-1]["detail"]
    assert detail.startswith(f"diffusers-0.22.0-train-lora.diff: hunk #2 of {EXAMPLE} (`lora_layers = "
                             "AttnProcsLayers(unet.attn_processors)`): target text gone from "
                             "the new file, still needed (proven on the emulated device: without them the example's "
                             "first step fails: Expected all tensors to be on the same device"), detail
    assert (home.repatch / "diffusers-0.24.0" / f"{EXAMPLE}.rej").is_file()
    assert sd_manifest.load(manifest).component("diffusers").version == "0.22.0"


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.network
def test_the_examples_of_the_torch_28_era(tiny_home, tmp_path):
    """0.32.0 on (they need torch >= 2.3), and the SD 1.5 stack's 0.29.2: proven on that stack's Python 3.11 +
    torch 2.8.0 and the emulated torch_tpu 2.8 with its strict profile."""
    repo = history()
    base = torch_venv("3.11", SD15_LOCK, torch="2.8.0")
    emu = emulation.build(Runner(), base, tiny_home)
    man = sd_manifest.load(SD15_MANIFEST)  # [emulator] profile = "torch_tpu-2.8"
    table = {}
    for release in ["0.29.2", *[r for r in distinct_examples(repo) if Version(r) > TORCH_21_UNTIL]]:
        found = prove_release(repo, release, base, tiny_home, emu, tmp_path / release, man)
        assert found["port"] == "{} ({})".format(*expected(release)), (release, found)
        assert found["placement"][0] == proof.OBSOLETE, (release, found)
        table[release] = found
    for release, found in table.items():
        print(f"{release:8} | {json.dumps(found)}")
