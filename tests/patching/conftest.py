"""What the patching tests share: where to find upstream's history (tags the shared mirrors lack),
and a manifest of one real upstream component for the ladders."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import shared_mirrors

HISTORY = "SD_ENV_TEST_UPSTREAM_HISTORY"


def upstream_history(name: str, tag: str) -> Path | None:
    """A git mirror prefix (the `--git-mirror` layout) whose huggingface/NAME.git has `tag`: the releases
    of accelerate PyPI lacks (1.1.0, 1.11.0 on) and diffusers' examples/ exist only in git. Taken from
    $SD_ENV_TEST_UPSTREAM_HISTORY, else $SD_ENV_GIT_MIRROR, else the shared mirrors (shallow at the pins,
    so usually without)."""
    given = [os.environ.get(HISTORY), os.environ.get("SD_ENV_GIT_MIRROR")]
    for prefix in [*(Path(g) for g in given if g), *filter(None, [shared_mirrors()])]:
        repo = prefix / "huggingface" / f"{name}.git"
        found = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", "-q", "--verify", f"refs/tags/{tag}"],
                               capture_output=True, text=True)
        if repo.exists() and found.returncode == 0:
            return prefix
    return None


def no_history(name: str, tag: str) -> str:
    return (f"skipped: no git mirror with {name}'s tag {tag} (the shared mirrors hold only the pinned commits); "
            f"{HISTORY}=PREFIX with PREFIX/huggingface/{name}.git holding upstream's tags runs it")


def one_component_manifest(root: Path, ports: list[Path], name: str, version: str, patch: str, *,
                           python: str = "3.9", git_url: str | None = None, commit: str | None = None,
                           torch: str = "2.1.0", profile: str | None = None) -> Path:
    """A manifest of one real upstream component at `version` with `patch`, and copies of `ports` in
    root/patches (where repatch writes). `git_url` defaults to huggingface/NAME on GitHub (a mirror
    rewrites it); an unreachable one makes sd-env take the sdist. `profile`: the emulated device's
    strict profile ([emulator], as the SD 1.5 stack names torch_tpu-2.8)."""
    own = root / "patches"
    own.mkdir()
    for port in ports:
        shutil.copy(port, own / port.name)
    url = git_url or f"https://github.com/huggingface/{name}.git"
    emulator = f'\n[emulator]\nprofile = "{profile}"\n' if profile else ""
    path = root / "manifests" / f"{name}.toml"
    path.parent.mkdir(parents=True)
    path.write_text(f'''schema = 1
name = "{name}-ladder"
python = "{python}"
device = "tpu:0"
patches_dir = "{own}"

[torch]
requirements = ["torch=={torch}"]
index = "https://pypi.org/simple"
{emulator}
[[component]]
name = "{name}"
git = "{url}"
tag = "v{version}"
version = "{version}"
{f'commit = "{commit}"' if commit else ""}
patches = ["{patch}"]
''')
    return path
