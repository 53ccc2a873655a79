"""The role's driver-plan.sh against a real dpkg database of its own (no root needed).

dpkg installs the fleet test's stand-in driver package into a private admin folder and
root (`--admindir`, `--instdir`, `--force-not-root`); driver-plan.sh's dpkg-query reads
that database through DPKG_ADMINDIR. The plan lists a .deb only when its package is not
installed at the file's version: a package on hold is installed (it was reinstalled on
every run while the script wanted exactly "install ok installed").
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fleet.test_fleet import STANDIN, STANDIN_VERSION, standin_deb
from tests.kit.fleetkit import ANSIBLE

PLAN = ANSIBLE / "roles" / "sd_env" / "files" / "driver-plan.sh"
missing = [tool for tool in ("dpkg", "dpkg-deb", "dpkg-query") if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"skipped: no {', '.join(missing)} on this machine (not Debian)")


class Database:
    """A dpkg database and install root of their own under `where`."""

    def __init__(self, where: Path) -> None:
        self.admin, self.root = where / "admin", where / "root"
        for sub in ("info", "updates", "triggers"):
            (self.admin / sub).mkdir(parents=True)
        (self.admin / "status").touch()
        (self.admin / "available").touch()
        self.root.mkdir()

    def dpkg(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(["dpkg", f"--admindir={self.admin}", f"--instdir={self.root}", "--force-not-root",
                        "--force-script-chrootless", "--log=/dev/null", *args], input=stdin, text=True,
                       check=True, capture_output=True, timeout=120)

    def status(self) -> str:
        """dpkg's status and version of the stand-in ("" when dpkg knows no such package)."""
        return subprocess.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", STANDIN], check=False,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "DPKG_ADMINDIR": str(self.admin)}).stdout

    def plan(self, *debs: Path) -> list[str]:
        got = subprocess.run(["sh", "-c", PLAN.read_text(), "driver-plan", *map(str, debs)], check=True,
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DPKG_ADMINDIR": str(self.admin)})
        return got.stdout.splitlines()


def test_a_package_on_hold_at_the_files_version_is_installed_not_planned(tmp_path):
    db = Database(tmp_path / "db")
    deb = standin_deb(tmp_path)
    newer = standin_deb(tmp_path, "0.0.1-standin")
    assert db.plan(deb) == [str(deb)]  # not installed: planned
    db.dpkg("-i", str(deb))
    assert db.status() == f"install ok installed {STANDIN_VERSION}"
    assert db.plan(deb) == []
    db.dpkg("--set-selections", stdin=f"{STANDIN} hold\n")
    assert db.status() == f"hold ok installed {STANDIN_VERSION}"
    assert db.plan(deb) == []  # on hold at this version: installed, left alone
    assert db.plan(newer) == [str(newer)]  # another version: planned, hold or not
    db.dpkg("--set-selections", stdin=f"{STANDIN} deinstall\n")
    assert db.plan(deb) == []  # selected for removal but still installed: still installed
    db.dpkg("--remove", STANDIN)
    assert db.status() == ""  # gone (it has no conffiles to keep)
    assert db.plan(deb) == [str(deb)]
