"""Shared by the bundle tests: a small project to bundle (the tiny upstream of conftest.py, a patch,
and a hashed lock of two small pure-Python wheels), and running a command with no network at all
while strace records every connect() it makes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_env.cli import main
from tests.conftest import TPU_PATCH, Project, git, make_upstream

PINS = {  # name==version -> sha256 of its only artifact (pure-Python wheels)
    "six==1.16.0": "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254",
    "idna==3.4": "90b77e79eaa3eba6de819a0c442c0b4ceefc341a7a2ab77d7562bf49f425c5c2",
}
# What a fresh venv needs to build the tiny component editable (setuptools >= 64), as the real locks pin it.
BUILD_PINS = {
    "setuptools==68.1.2": "3d8083eed2d13afc9426f227b24fd1659489ec107c0e86cec2ffdde5c92e790b",
    "wheel==0.41.2": "75909db2664838d015e3d9139004ee16711748a52c8f336b52882266540215d8",
}
SIX = "packages/six-1.16.0-py2.py3-none-any.whl"
IDNA = "packages/idna-3.4-py3-none-any.whl"
SD_ENV = str(Path(sys.executable).with_name("sd-env"))
LOCK_TABLE = """
[lock]
requirements = "requirements.in"
exclude_newer = "2023-08-31T00:00:00Z"
files = { pypi = "test.pypi.lock.txt" }
"""


@dataclass
class Made:
    project: Project
    out: Path
    commit: str
    key: Path | None = None  # the SSH key it was signed with (None: no ssh-keygen here)
    allowed_signers: Path | None = None  # an allowed-signers file naming that key's principal

    @property
    def id(self) -> str:
        return hashlib.sha256((self.out / "index.json").read_bytes()).hexdigest()


SIGNER = "builder@example.org"
has_ssh_keygen = shutil.which("ssh-keygen") is not None
needs_ssh_keygen = pytest.mark.skipif(not has_ssh_keygen, reason="skipped: no ssh-keygen (OpenSSH's client) here")


def make_key(where: Path, principal: str) -> tuple[Path, Path]:
    """An ed25519 key without passphrase, and an allowed-signers file naming it for `principal`."""
    where.mkdir(parents=True, exist_ok=True)
    key = where / principal.split("@")[0]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)], check=True)
    allowed = where / f"{key.name}.allowed_signers"
    allowed.write_text(f"{principal} {' '.join(key.with_suffix('.pub').read_text().split()[:2])}\n")
    return key, allowed


def make_project(root: Path, name: str = "test", pins: dict[str, str] | None = None) -> tuple[Project, str]:
    """The small project (PINS, or `pins`: name==version -> sha256 of its only artifact)."""
    up = make_upstream(root)
    commit = git(up.repo, "rev-parse", "HEAD")
    project = Project(root / "project")
    project.add_patch("tpu.diff", up.diff(TPU_PATCH))
    project.write_manifest([{"name": "tinypkg", "git": up.url, "tag": "v1.0", "version": "1.0", "commit": commit,
                             "patches": ["tpu.diff"], "sdist": False}], extra=LOCK_TABLE)
    if name != "test":
        project.manifest.write_text(project.manifest.read_text().replace('name = "test"', f'name = "{name}"'))
    folder = project.manifest.parent
    pins = pins or PINS
    (folder / "requirements.in").write_text("".join(pin.split("==")[0] + "\n" for pin in pins))
    (folder / "test.pypi.lock.txt").write_text("".join(f"{pin} \\\n    --hash=sha256:{digest}\n"
                                                       for pin, digest in pins.items()))
    return project, commit


def make_bundle(root: Path) -> Made:
    """The project's bundle (with an extra folder of weights) in root/out: `made` in conftest.py."""
    project, commit = make_project(root)
    weights = root / "weights"
    (weights / "unet").mkdir(parents=True)
    (weights / "unet" / "model.bin").write_bytes(os.urandom(4096))
    (weights / "model_index.json").write_text("{}\n")
    out = root / "out"
    key, allowed = make_key(root / "keys", SIGNER) if has_ssh_keygen else (None, None)
    code = main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home),
                 "--include", f"weights={weights}", *(["--sign", str(key)] if key else [])])
    assert code == 0
    return Made(project, out, commit, key, allowed)


def copy_of(made: Made, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(made.out, dest)
    return dest


def tree_hash(where: Path) -> str:
    """Every path, size and content under `where`: proves nothing was installed."""
    digest = hashlib.sha256()
    for path in sorted(where.rglob("*")):
        digest.update(str(path.relative_to(where)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def site_of(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


# -- connect() calls, recorded with strace inside a namespace with no network ------------------------------
def offline(argv: list[str], trace: Path, **kw) -> subprocess.CompletedProcess:
    """`argv` in a new network namespace (only a down loopback), its connect() calls traced."""
    # by path: `env` may give the command a PATH without them
    strace = [shutil.which("strace") or "strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=connect", "-o", str(trace)]
    return subprocess.run([shutil.which("unshare") or "unshare", "-n", *strace, *argv], capture_output=True, text=True,
                          timeout=900, **kw)


_LOCAL = re.compile(r"sa_family=AF_UNIX|inet_addr\(\"127\.|inet_pton\(AF_INET6, \"::1\"")


def outside_connects(trace: Path) -> list[str]:
    return [line for line in trace.read_text().splitlines() if "connect(" in line and not _LOCAL.search(line)]


needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("strace") is None
                                   or os.geteuid() != 0, reason="needs root, unshare and strace (.ci/run installs it)")
