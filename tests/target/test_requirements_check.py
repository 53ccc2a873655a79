"""The in-process requirements check says what `pip check` says, on a real venv."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sd_env.system.runner import Runner
from sd_env.target import envs, requirements_check
from tests.conftest import run_in


def fake_dist(site: Path, name: str, version: str, requires: list[str]) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "RECORD").write_text("")


def test_same_lines_as_pip_check(fresh_target):
    site = Path(run_in(fresh_target, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    fake_dist(site, "Fake_App", "1.0", [
        "nothere>=1",  # missing
        "fake-lib>=2,<3",  # present, wrong version
        "fake-lib; python_version < '3'",  # marker false: ignored
        "onlywin; sys_platform == 'win32'",  # marker false here: ignored
        "extraonly; extra == 'docs'",  # an extra nobody asked for: ignored
        "fake.other==1.0rc1",  # a pre-release pin that is met, named with another spelling
    ])
    fake_dist(site, "fake_lib", "1.5", [])
    fake_dist(site, "fake-other", "1.0rc1", ["fake-app"])
    pip = subprocess.run([str(fresh_target), "-m", "pip", "check"], capture_output=True, text=True)
    assert pip.returncode == 1
    inv = envs.inventory(Runner(), fresh_target)
    ours = requirements_check.broken(inv)
    assert ours == sorted(pip.stdout.strip().splitlines())
    assert len(ours) == 2, ours


def test_a_clean_venv_is_clean(fresh_target):
    inv = envs.inventory(Runner(), fresh_target)
    assert inv.markers["python_version"] == run_in(fresh_target, "import sys; print('%d.%d' % sys.version_info[:2])")
    assert requirements_check.broken(inv) == []
