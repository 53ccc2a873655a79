"""Strict profiles: data files, one per plugin era, each rule with its source; what each refuses.

The profiles are checked as data here (fast); the slow tests run the rules on the emulated
device of each era: exactly what the profile lists is refused or changed, nothing without it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sd_env.core import manifest
from sd_env.errors import InputError, ManifestError
from sd_env.verify import emulation
from tests.conftest import ERAS, ROOT, SD15_MANIFEST

PROFILES = emulation.source() / "profiles"
RULES = {"refuse_int64_alloc", "int64_results_to_int32", "int64_host_copy_to_int32", "arange_int32",
         "scalar_tensor_int32", "max_allocation", "refuse_int64_storage"}  # torch_tpu/_profile.py's KNOWN


@pytest.mark.parametrize("era", ERAS)
def test_one_profile_per_era_each_entry_with_its_source(era: str) -> None:
    profile = json.loads((PROFILES / f"torch_tpu-{era}.json").read_text())
    assert profile["torch"] == era and profile["name"] == f"torch_tpu-{era}"
    assert profile["read_from"]["repository"] == "sophgo/torch-tpu" and len(profile["read_from"]["commit"]) == 40
    for entry in profile["entries"]:
        assert entry["rule"] in RULES, entry
        assert entry["what"] and entry["evidence"] and entry["source"]["path"].startswith("torch_tpu/"), entry
        assert entry["source"]["commit"] and entry["source"]["code"], entry
    assert len({e["rule"] for e in profile["entries"]}) == len(profile["entries"])
    known = (ROOT / "installer" / "sd_env" / "emulator" / "torch_tpu" / "_profile.py").read_text()
    assert all(f'"{rule}"' in known for rule in RULES)


def test_profile_names_and_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert emulation.profile_path("strict", "2.8") == PROFILES / "torch_tpu-2.8.json"
    assert emulation.profile_path("torch_tpu-2.1", "2.8") == PROFILES / "torch_tpu-2.1.json"
    with pytest.raises(InputError) as err:
        emulation.profile_path("torch_tpu-9", "2.8")
    assert "torch_tpu-2.1, torch_tpu-2.8" in err.value.hint
    man = manifest.load(SD15_MANIFEST)
    assert man.emulator == manifest.EmulatorSpec(None, "torch_tpu-2.8")
    emu = emulation.Emulator(tmp_path, True, 0.0, "key", "2.8")
    setup = emulation.settings(man, emu)
    monkeypatch.delenv("SD_ENV_EMULATED_MEMORY", raising=False)
    env = emulation.environment(emu, "tpu:0", emulation.Settings(setup.profile, "16G"))
    assert env["SD_ENV_EMULATED_PROFILE"] == str(PROFILES / "torch_tpu-2.8.json")
    assert env["SD_ENV_EMULATED_MEMORY"] == "16G"
    monkeypatch.setenv("SD_ENV_EMULATED_MEMORY", "8G")  # the user's own setting wins over the manifest's
    assert "SD_ENV_EMULATED_MEMORY" not in emulation.environment(emu, "tpu:0", emulation.Settings(None, "16G"))
    default = manifest.load(ROOT / "manifests" / "sc7-sd14-lora.toml")
    assert emulation.settings(default, emu).profile is None  # lenient unless asked
    assert emulation.settings(default, emu, strict=True).profile == PROFILES / "torch_tpu-2.8.json"


def test_manifest_emulator_table_is_checked(tmp_path: Path) -> None:
    text = SD15_MANIFEST.read_text().replace('profile = "torch_tpu-2.8"', 'memory = "lots"')
    bad = tmp_path / "m.toml"
    bad.write_text(text.replace("../patches", str(ROOT / "patches")).replace(
        '"sc7-sd15-lora.pypi.lock.txt"', f'"{ROOT / "manifests" / "sc7-sd15-lora.pypi.lock.txt"}"').replace(
        '"requirements-sd15.in"', f'"{ROOT / "manifests" / "requirements-sd15.in"}"'))
    with pytest.raises(ManifestError) as err:
        manifest.load(bad)
    assert "emulator.memory" in str(err.value) and "16G" in err.value.hint
    bad.write_text(bad.read_text().replace('memory = "lots"', 'memory = "1.5G"\nprofile = "mine.json"'))
    assert manifest.load(bad).emulator == manifest.EmulatorSpec("1.5G", str(tmp_path / "mine.json"))


# ---- the rules on the emulated device ------------------------------------------

PROBE = """
import json, os, torch, torch_tpu
def attempt(fn):
    try:
        t = fn()
        return [str(t.dtype).replace("torch.", ""), t.device.type] if isinstance(t, torch.Tensor) else "ok"
    except RuntimeError as exc:
        return "refused: " + str(exc).splitlines()[0]
x = torch.randn(3, 4, device="tpu")
print(json.dumps({
    "randint": attempt(lambda: torch.randint(0, 9, (2,), device="tpu")),
    "randint_int32": attempt(lambda: torch.randint(0, 9, (2,), device="tpu", dtype=torch.int32)),
    "zeros_long": attempt(lambda: torch.zeros(2, dtype=torch.long, device="tpu")),
    "host_long": attempt(lambda: torch.tensor([1, 2]).to("tpu")),
    "long_of_device": attempt(lambda: torch.ones(2, dtype=torch.int32, device="tpu").long()),
    "arange": attempt(lambda: torch.arange(4, device="tpu")),
    "arange_long": attempt(lambda: torch.arange(4, dtype=torch.long, device="tpu")),
    "argmax": attempt(lambda: x.argmax(-1)),
    "scalar_tensor": attempt(lambda: torch.scalar_tensor(3, dtype=torch.long, device="tpu")),
    "storage": attempt(lambda: torch.tensor([1, 2]).storage().tpu()),
    "embedding": attempt(lambda: torch.nn.functional.embedding(torch.tensor([[1, 2]]).to("tpu"), x)),
    # only where a profile refuses it before allocating (2.1): elsewhere it would really take 4 GiB
    "4GiB": attempt(lambda: torch.empty(2**32, dtype=torch.uint8, device="tpu"))
            if os.environ.get("SD_ENV_EMULATED_PROFILE", "").endswith("2.1.json") else None,
    "profile": torch_tpu.emulator.stats()["profile"],
}))
"""


def probe(era_target: tuple[Path, emulation.Emulator], profile: str | None) -> dict:
    python, emu = era_target
    setup = emulation.Settings(emulation.profile_path(profile, emu.era) if profile else None)
    done = subprocess.run([str(python), "-c", PROBE], env={**os.environ, **emulation.environment(emu, "tpu:0", setup)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("era", ERAS)
def test_without_a_profile_nothing_is_refused(era: str, emulated) -> None:
    got = probe(emulated(era), None)
    assert got.pop("profile") is None
    refused = {k: v for k, v in got.items() if isinstance(v, str) and v.startswith("refused") and k != "4GiB"}
    assert refused == {} and got["randint"] == ["int64", "tpu"] and got["host_long"] == ["int64", "tpu"], got


@pytest.mark.slow
def test_the_28_profile_keeps_int64_off_the_device(emulated) -> None:
    got = probe(emulated("2.8"), "strict")
    banned = "refused: not support int64, please use int32"  # EmptyStrided.cpp's message
    assert got["profile"] == "torch_tpu-2.8"
    assert got["randint"] == got["zeros_long"] == got["long_of_device"] == banned, got
    assert got["randint_int32"] == got["host_long"] == got["arange"] == got["argmax"] == ["int32", "tpu"], got
    assert got["scalar_tensor"] == ["int32", "tpu"] and got["embedding"] == ["float32", "tpu"], got
    assert got["arange_long"] == "refused: arange only support int32 & float32 now", got
    assert got["storage"].startswith("refused: Cannot create tpu storage as torch.int64"), got


@pytest.mark.slow
def test_the_21_profile_refuses_int64_storages_and_4gib_allocations_only(emulated) -> None:
    got = probe(emulated("2.1"), "strict")
    assert got["profile"] == "torch_tpu-2.1"
    assert got["4GiB"] == "refused: TPU only allows to allocate memory with size smaller than (2^32) bytes", got
    assert got["storage"].startswith("refused: Cannot create tpu storage as torch.int64"), got
    assert got["randint"] == got["host_long"] == got["zeros_long"] == ["int64", "tpu"], got


@pytest.mark.slow
def test_a_profile_of_the_other_era_is_refused_at_import(emulated) -> None:
    python, emu = emulated("2.1")
    env = {**os.environ, **emulation.environment(emu), "SD_ENV_EMULATED_PROFILE": str(PROFILES / "torch_tpu-2.8.json")}
    done = subprocess.run([str(python), "-c", "import torch_tpu"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "this emulator is built for torch 2.1" in done.stderr, done.stderr[-2000:]
