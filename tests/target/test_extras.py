"""Packages the lock does not name: verify warns with their names, `install --sync` removes exactly them."""

from __future__ import annotations

import json
from pathlib import Path

from sd_env.core import manifest
from sd_env.system.runner import Runner
from sd_env.target import envs, extras
from tests.conftest import run_in, tiny_component
from tests.target.test_requirements_check import fake_dist

HASH = "a" * 64


def installable_dist(site: Path, name: str, version: str, requires: list[str]) -> Path:
    """A dist pip can uninstall: a module and a RECORD naming it."""
    fake_dist(site, name, version, requires)
    module = site / f"{name.replace('-', '_')}_mod.py"
    module.write_text("VALUE = 1\n")
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    (info / "RECORD").write_text(f"{module.name},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return module


def lock_everything(project, upstream, python: Path) -> None:
    """A manifest whose lock names every distribution the target has now (hashes are never checked:
    nothing is missing, so nothing is installed)."""
    inv = envs.inventory(Runner(), python)
    pins = "".join(f"{name}=={entries[0]['version']} \\\n    --hash=sha256:{HASH}\n"
                   for name, entries in inv.dists.items() if name.lower() not in extras.KEEP)
    (project.root / "manifests").mkdir(parents=True, exist_ok=True)
    (project.root / "manifests" / "test.lock.txt").write_text(pins)
    lock = ('[lock]\nrequirements = "requirements.in"\nplatform = "x86_64-unknown-linux-gnu"\n'
            'exclude_newer = "2023-08-31T00:00:00Z"\nfiles = { pypi = "test.lock.txt" }\n')
    project.write_manifest([tiny_component(upstream, None)], extra=lock)


def test_verify_names_extras_and_sync_removes_exactly_them(project, upstream, fresh_target, capsys):
    site = Path(run_in(fresh_target, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    lock_everything(project, upstream, fresh_target)
    assert project.cli("install", python=fresh_target) == 0  # the component; the lock is all there
    before = {n for n in envs.inventory(Runner(), fresh_target).dists}
    modules = [installable_dist(site, "left-over", "1.0", ["another-left-over"]),
               installable_dist(site, "another-left-over", "2.0", [])]
    man = manifest.load(project.manifest)
    assert extras.find(man, envs.inventory(Runner(), fresh_target)) == ["another-left-over", "left-over"]

    capsys.readouterr()
    project.cli("verify", "--quick", "--json", python=fresh_target)
    pins = next(c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "pins")
    assert pins["status"] == "warn", pins
    assert "2 packages not in the lock: another-left-over, left-over" in pins["detail"]
    assert "sd-env install --sync" in pins["detail"]

    # Off a terminal, --sync without --yes removes nothing and says how to go on.
    assert project.cli("install", "--sync", python=fresh_target) == 2
    assert "add --yes" in capsys.readouterr().err and all(m.exists() for m in modules)

    assert project.cli("install", "--sync", "--yes", "--json", python=fresh_target) == 0
    sync = [r for r in json.loads(capsys.readouterr().out)["results"] if r["step"] == "sync"]
    assert sync[0]["detail"] == "removed 2 packages not in the lock: another-left-over, left-over"
    assert not any(m.exists() for m in modules)
    after = {n for n in envs.inventory(Runner(), fresh_target).dists}
    assert after == before  # nothing else went: pip, setuptools, wheel and the component stay
    assert {"pip", "setuptools", "wheel", "tinypkg"} <= {n.lower() for n in after}
    assert project.cli("install", "--sync", "--json", python=fresh_target) == 0
    assert "no packages outside the lock" in capsys.readouterr().out


def test_sophgos_torch_tpu_keeps_what_it_requires(project, upstream, fresh_target):
    """Sophgo's wheel is never an extra, and neither is its closure: --sync must not break it."""
    site = Path(run_in(fresh_target, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    lock_everything(project, upstream, fresh_target)
    installable_dist(site, "torch-tpu", "2.1.0.post1", ["sophgo-runtime>=1"])
    installable_dist(site, "sophgo-runtime", "1.0", [])
    installable_dist(site, "left-over", "1.0", [])
    man = manifest.load(project.manifest)
    assert extras.find(man, envs.inventory(Runner(), fresh_target)) == ["left-over"]
