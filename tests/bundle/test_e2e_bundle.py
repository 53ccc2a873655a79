"""The default manifest's real bundle (2.8 GB): made from the bootstrapped home, installed with
no network, then `verify --quick` there. Slow suite only; tests/bundle/test_bundle.py proves the same on
a tiny manifest in the default run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit.bundlekit import needs_unshare, offline, outside_connects

pytestmark = [pytest.mark.slow, pytest.mark.network, needs_unshare]
SD_ENV = str(Path(sys.executable).with_name("sd-env"))


def test_the_real_bundle_installs_and_verifies_offline(bootstrapped, real_bundle, tmp_path):
    home, _ = bootstrapped
    out = real_bundle
    index = json.loads((out / "index.json").read_text())
    assert len([m for m in index["members"] if m["kind"] == "package"]) == 87
    recorded = json.loads((home / "state.json").read_text())["components"]
    assert {c["name"]: c["source"] for c in index["components"]} == {n: r["source"] for n, r in recorded.items()}
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "SD_ENV_HOME", "SD_ENV_MANIFEST")}
    new_home = tmp_path / "offline-home"
    got = offline([SD_ENV, "install", "--bundle", str(out), "--home", str(new_home)], tmp_path / "c1", env=env)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    got = offline([SD_ENV, "verify", "--quick", "--json", "-m", str(out / "manifests" / "sc7-sd14-lora.toml"),
                   "--home", str(new_home)], tmp_path / "c2", env=env)
    checks = {c["name"]: c["status"] for c in json.loads(got.stdout)["checks"]}
    assert got.returncode == 0 and checks["linear smoke"] == "ok", checks
    assert outside_connects(tmp_path / "c1") == [] and outside_connects(tmp_path / "c2") == []
    assert subprocess.run([str(new_home / "venv" / "bin" / "python"), "-c", "import torch, diffusers"]).returncode == 0
