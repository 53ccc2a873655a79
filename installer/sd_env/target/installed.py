"""The target environment: which interpreter the components are installed into."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from sd_env.errors import StepError
from sd_env.system.runner import Runner
from sd_env.system.tools import find_uv
from sd_env.target.envs import Inventory


@dataclass(frozen=True)
class Installed:
    versions: tuple[str, ...]
    editable: bool
    url: str | None

    def points_at(self, checkout: Path) -> bool:
        return self.editable and self.url == checkout.resolve().as_uri()


def installed(inv: Inventory, names: list[str]) -> dict[str, Installed]:
    """How each named distribution is installed, from an inventory of the target."""
    by_name = {canonicalize_name(n): entries for n, entries in inv.dists.items()}
    result = {}
    for name in names:
        entries = by_name.get(canonicalize_name(name), [])
        direct = next((e for e in entries if e.get("url")), {})
        result[name] = Installed(tuple(e["version"] for e in entries), bool(direct.get("editable")),
                                 direct.get("url"))
    return result


def install_editable(runner: Runner, python: Path, checkout: Path) -> None:
    """Editable install with no dependency resolution (the lock did that) and no isolated
    build env (the target's own setuptools builds, so no index is needed for it)."""
    flags = ["--no-deps", "--no-build-isolation", "-e", str(checkout)]
    pep517 = ["--use-pep517"]  # old pips fall back to `setup.py develop` (no direct_url.json) without it
    hint = "the target needs pip and setuptools>=64 (they are in the lock); see the log for the build output"
    if _has_pip(runner, python):
        runner.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *pep517, *flags],
                   hint=hint, label=f"pip: building {checkout.name} (editable)")
    elif uv := find_uv():
        runner.run([uv, "pip", "install", "--python", str(python), *flags], hint=hint,
                   label=f"uv: building {checkout.name} (editable)")
    else:
        raise StepError(f"{python} has no pip and there is no uv (beside sd-env or on PATH)",
                        "install pip into the target: "
                        f"{python} -m ensurepip")


def _has_pip(runner: Runner, python: Path) -> bool:
    return runner.run([str(python), "-I", "-c", "import pip"], check=False, timeout=60).returncode == 0
