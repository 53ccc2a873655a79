"""The target environment: which interpreter the components are installed into."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sd_env.errors import StepError
from sd_env.runner import Runner


@dataclass(frozen=True)
class Installed:
    versions: tuple[str, ...]
    editable: bool
    url: str | None

    def points_at(self, checkout: Path) -> bool:
        return self.editable and self.url == checkout.resolve().as_uri()


def installed(runner: Runner, python: Path, names: list[str]) -> dict[str, Installed]:
    """Ask the target interpreter (in a subprocess) how each distribution is installed."""
    probe = resources.files("sd_env") / "probes" / "dists.py"
    with resources.as_file(probe) as script:
        out = runner.run([str(python), "-I", str(script), *names], timeout=120).stdout
    data = json.loads(out)
    return {n: Installed(tuple(d["versions"]), d["editable"], d["url"]) for n, d in data.items()}


def install_editable(runner: Runner, python: Path, checkout: Path) -> None:
    """Editable install with no dependency resolution (the lock did that) and no isolated
    build env (the target's own setuptools builds, so no index is needed for it)."""
    flags = ["--no-deps", "--no-build-isolation", "-e", str(checkout)]
    pep517 = ["--use-pep517"]  # old pips fall back to `setup.py develop` (no direct_url.json) without it
    hint = "the target needs pip and setuptools>=64 (they are in the lock); see the log for the build output"
    if _has_pip(runner, python):
        runner.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *pep517, *flags],
                   hint=hint)
    elif shutil.which("uv"):
        runner.run(["uv", "pip", "install", "--python", str(python), *flags], hint=hint)
    else:
        raise StepError(f"{python} has no pip and uv is not on PATH", "install pip into the target: "
                        f"{python} -m ensurepip")


def _has_pip(runner: Runner, python: Path) -> bool:
    return runner.run([str(python), "-I", "-c", "import pip"], check=False, timeout=60).returncode == 0
