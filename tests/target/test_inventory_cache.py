"""The target inventory that `run`, `shell` and `status` keep in the home: reused while the target is
unchanged, read again after any install, removal or in-place edit (a stale one would give `run` the
wrong device). Real venvs, real pip installs of real wheels."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sd_env.system.runner import Runner
from sd_env.target import envs, inventory_cache, trainenv
from tests.kit.faultkit import make_wheel


@pytest.fixture
def settle(monkeypatch):
    """A short racy margin, and a wait past it: what a user's next command, seconds later, sees."""
    monkeypatch.setattr(inventory_cache, "MARGIN", 0.2)
    return lambda: time.sleep(0.3)


def probes(runner: Runner) -> int:
    return sum(any(str(a).endswith("inventory.py") for a in call) for call in runner.calls)


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args, "-q", "--disable-pip-version-check"], check=True)


def device(inv: envs.Inventory) -> str:
    return trainenv.build(inv, "tpu:0", base={}).device


def test_an_install_or_a_removal_in_the_target_is_never_hidden(tmp_path, fresh_target, settle):
    cache, runner = tmp_path / "cache", Runner()
    settle()
    first = envs.inventory(runner, fresh_target, cache)
    assert envs.inventory(runner, fresh_target, cache) == first and probes(runner) == 1  # kept, reused
    assert device(first) == "cpu"  # no torch_tpu: the manifest's tpu:0 cannot work

    wheel = make_wheel(tmp_path / "wheels", "torch-tpu", "2.1.0.post1")
    pip(fresh_target, "install", "--no-deps", "--no-index", str(wheel))
    installed = envs.inventory(runner, fresh_target, cache)  # at once, inside the racy margin too
    assert probes(runner) == 2 and "torch-tpu" in installed.dists and device(installed) == "tpu:0"
    settle()
    assert envs.inventory(runner, fresh_target, cache) == installed  # read again or kept: either is true
    read = probes(runner)
    assert envs.inventory(runner, fresh_target, cache) == installed and probes(runner) == read  # kept by now

    pip(fresh_target, "uninstall", "-y", "torch-tpu")
    settle()
    removed = envs.inventory(runner, fresh_target, cache)
    assert probes(runner) == read + 1 and "torch-tpu" not in removed.dists and device(removed) == "cpu"


def test_metadata_edited_in_place_is_read_again(tmp_path, fresh_target, settle):
    """`setup.py egg_info` rewrites PKG-INFO in place: the folder listing stays, the version changes."""
    cache, runner = tmp_path / "cache", Runner()
    pip(fresh_target, "install", "--no-deps", "--no-index", str(make_wheel(tmp_path / "w", "tinydist", "1.0")))
    settle()
    assert envs.inventory(runner, fresh_target, cache).dists["tinydist"][0]["version"] == "1.0"
    metadata = Path(envs.inventory(runner, fresh_target, cache).dists["tinydist"][0]["path"]) / "METADATA"
    assert probes(runner) == 1
    with metadata.open("r+") as out:  # same file, same size: only its mtime and ctime tell
        out.write(metadata.read_text().replace("Version: 1.0", "Version: 1.1"))
    assert envs.inventory(runner, fresh_target, cache).dists["tinydist"][0]["version"] == "1.1"
    assert probes(runner) == 2


def test_a_change_inside_the_margin_is_not_kept(tmp_path, fresh_target, monkeypatch):
    """Files younger than MARGIN (here an hour) when the probe started: nothing is kept."""
    monkeypatch.setattr(inventory_cache, "MARGIN", 3600.0)
    cache, runner = tmp_path / "cache", Runner()
    envs.inventory(runner, fresh_target, cache)
    envs.inventory(runner, fresh_target, cache)
    assert probes(runner) == 2 and not inventory_cache.entry_file(cache, fresh_target).exists()


def test_a_damaged_or_foreign_entry_is_ignored(tmp_path, fresh_target, settle):
    cache, runner = tmp_path / "cache", Runner()
    settle()
    good = envs.inventory(runner, fresh_target, cache)
    entry = inventory_cache.entry_file(cache, fresh_target)
    for text in ("{not json", '{"format": 1}', entry.read_text().replace('"format": 1', '"format": 0')):
        entry.write_text(text)
        assert envs.inventory(runner, fresh_target, cache) == good
    assert probes(runner) == 4
