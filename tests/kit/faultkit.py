"""Helpers of the fault corpus: sd-env in a subprocess (to kill it), tiny wheels, tree hashes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tests.conftest import TPU_PATCH, git, tiny_component

TMP_NAMES = (".sd-env-tmp", ".tmp", ".partial")


def make_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any", metadata: str = "") -> Path:
    """A real, minimal wheel (one module, METADATA, WHEEL, RECORD)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{metadata}",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: sd-env-tests\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    for rel, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{rel},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for rel, text in files.items():
            whl.writestr(rel, text)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_text(wheel: Path, name: str, version: str) -> str:
    return f"{name}=={version} \\\n    --hash=sha256:{sha256(wheel)}\n"


def tree_hash(*roots: Path) -> dict[str, str]:
    """Every file and link under `roots` (mode and content): what "nothing changed" compares."""
    seen: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            seen[str(root)] = "absent"
            continue
        for path in sorted([root, *root.rglob("*")]):
            if path.is_symlink():
                seen[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                seen[str(path)] = f"{path.stat().st_mode:o}:{sha256(path)}"
            elif path.is_dir():
                seen[str(path)] = "dir"
    return seen


def two_patch_project(project, upstream, wheels: Path) -> None:
    """tinypkg v1.0 with two patches (so a series can be half applied) and a lock of one tiny wheel."""
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.add_patch("tinypkg-1.0-tpu.diff", upstream.diff(TPU_PATCH))
    project.add_patch("tinypkg-1.0-examples.diff",
                      upstream.diff({"examples/train.py": "import tinypkg\nprint('training on tpu')\n"}))
    wheel = make_wheel(wheels, "tinydep", "1.0")
    lock = project.root / "manifests" / "test.lock.txt"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(lock_text(wheel, "tinydep", "1.0"))
    (project.root / "manifests" / "requirements.in").write_text("tinydep\n")
    extra = ('[lock]\nrequirements = "requirements.in"\nexclude_newer = "2023-08-31T00:00:00Z"\n'
             '[lock.files]\npypi = "test.lock.txt"\n')
    project.write_manifest([tiny_component(upstream, commit, ["tinypkg-1.0-tpu.diff", "tinypkg-1.0-examples.diff"])],
                           extra=extra)


def offline_env(wheels: Path, **extra: str) -> dict[str, str]:
    """sd-env in a subprocess, installing the lock from `wheels` only (no index)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_HOME")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), COLUMNS="200", **extra)
    return env


def sd_env(project, *args: str, python: Path, env: dict[str, str], timeout: float = 300,
           kill_on: str | None = None, kill_after: float = 0.0) -> subprocess.CompletedProcess:
    """`sd-env ARGS` in its own process group; with `kill_on`, SIGKILL it `kill_after` seconds after a
    stderr line containing `kill_on`. The whole group is killed afterwards, so no orphan keeps writing."""
    argv = [sys.executable, "-m", "sd_env", args[0], "-m", str(project.manifest), "--home", str(project.home),
            "--python", str(python), *args[1:]]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    err_lines: list[str] = []
    try:
        if kill_on is not None:
            assert proc.stderr is not None
            for line in proc.stderr:
                err_lines.append(line)
                if kill_on in line:
                    time.sleep(kill_after)
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, "".join(err_lines) + err)


def verified(project, python: Path, env: dict[str, str]) -> list[dict]:
    """`sd-env status --json` rows, asserting each component is pinned, patched, installed, unedited."""
    got = sd_env(project, "status", "--json", python=python, env=env)
    assert got.returncode == 0, got.stderr
    rows = json.loads(got.stdout)["components"]
    for row in rows:
        assert row["needs"] == [] and row["install_ok"] and not row["edited"], row
        assert all(st == "applied" for st in row["patches"].values()), row
    return rows


def leftovers(*roots: Path) -> list[str]:
    """Temporary files and scratch folders that must not survive a finished run."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            name = path.name
            ours = name.endswith(TMP_NAMES) or name.startswith((".state-", "sd-env-index-")) or name == "index.lock"
            if ours and not (".git" in path.parts[:-1] and name.endswith(".tmp")):  # git's own files aside
                found.append(str(path))
    return found + [str(r / "tmp") for r in roots if (r / "tmp").exists()]
