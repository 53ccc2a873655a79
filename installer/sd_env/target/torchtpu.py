"""Sophgo's torch_tpu wheel, and refusing Google's PyPI `torch-tpu` of the same import name."""

from __future__ import annotations

import re
from pathlib import Path

from sd_env.core.manifest import WheelSpec
from sd_env.core.names import canonical
from sd_env.errors import InputError, StepError
from sd_env.system.fsutil import sha256_file
from sd_env.system.runner import Runner
from sd_env.target.envs import Inventory

NAME = "torch-tpu"
COLLISION = ("PyPI's `torch-tpu` is Google's TorchTPU, unrelated to Sophgo's torch_tpu: same import "
             "name `torch_tpu`, same device name \"tpu\", but it needs Python >= 3.11 and torch >= 2.11 "
             "and does not drive an SC7 card")
SOPHGO_RELEASES = "Sophgo's torch-tpu releases (the SC7 SDK / the vendor's download page)"


def is_google(fields: dict) -> bool:
    """Google's TorchTPU, judged by what its metadata says of who made it, not by its Python range.

    Google's wheels on PyPI (0.2.0, 2026-10) say Home-page https://github.com/google-pytorch/torch_tpu,
    Summary "TPU/XLA support for PyTorch", Requires-Dist libtpu (Google's TPU runtime), torch>=2.11;
    its 0.0.0 is a bare "Placeholder". Sophgo's setup.py says author "sophgo", dev@sophgo.com,
    url https://github.com/sophgo/torch-tpu, and numbers its wheels after the torch they are built
    for (2.1.0.post1, 2.8.0.post1). A Requires-Python that leaves out 3.9 says nothing: Sophgo's
    wheels for Python 3.10+ stacks may declare just that.
    """
    words = " ".join([fields.get("home_page", ""), fields.get("author", ""), fields.get("author_email", ""),
                      fields.get("summary", ""), *fields.get("project_urls", [])]).lower()
    if "sophgo" in words:
        return False
    if "google" in words or "xla" in words:
        return True
    if any(_requirement_name(r) == "libtpu" for r in fields.get("requires_dist", fields.get("requires", []))):
        return True
    # Unmarked: Google's releases are 0.x; Sophgo's carry the torch version (2.x and on).
    major = re.match(r"\s*v?(\d+)", fields.get("version", ""))
    return major is not None and int(major.group(1)) == 0


def _requirement_name(text: str) -> str:
    """A requirement's distribution name, by PEP 508's name rule (`run` need not import packaging)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", text)
    return canonical(name.group(1)) if name else ""


def installed_google(inv: Inventory) -> dict | None:
    for name, entries in inv.dists.items():
        if canonical(name) == NAME:
            for entry in entries:
                if is_google(entry):
                    return entry
    return None


def refuse_installed_google(inv: Inventory) -> None:
    entry = installed_google(inv)
    if entry is not None:
        raise StepError(f"Google's torch-tpu {entry['version']} is installed in the target ({entry['path']})",
                        f"{COLLISION}. Remove it: `{inv.executable} -m pip uninstall -y torch-tpu`, "
                        f"then install Sophgo's wheel from {SOPHGO_RELEASES}")


def wheel_metadata(path: Path) -> dict:
    import email.parser  # here, not at the top: `run` reads the target's torch_tpu entry, never a wheel
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as whl:
            names = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
            if not names:
                raise InputError(f"{path}: not a wheel (no .dist-info/METADATA)",
                                 f"get the wheel from {SOPHGO_RELEASES}")
            msg = email.parser.Parser().parsestr(whl.read(names[0]).decode("utf-8", "replace"))
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: not a wheel: truncated or not a zip archive ({exc})",
                         f"download it again from {SOPHGO_RELEASES}") from None
    return {"name": msg.get("Name", ""), "version": msg.get("Version", ""),
            "home_page": msg.get("Home-page", ""), "author": msg.get("Author", ""),
            "author_email": msg.get("Author-email", ""), "summary": msg.get("Summary", ""),
            "project_urls": msg.get_all("Project-URL") or [], "requires_python": msg.get("Requires-Python", ""),
            "requires_dist": msg.get_all("Requires-Dist") or []}


def check_wheel(spec: WheelSpec, path: Path) -> tuple[str, dict]:
    """The wheel's sha256 and metadata, after checking it is Sophgo's and matches the manifest's sha256."""
    digest = sha256_file(path)
    if spec.sha256 and digest != spec.sha256:
        raise StepError(f"{path}: sha256 {digest}, the manifest expects {spec.sha256}",
                        "the wheel is not the one pinned: fetch it again from Sophgo or update torch_tpu.sha256")
    meta = wheel_metadata(path)
    if canonical(meta["name"]) != NAME:
        raise InputError(f"{path} is {meta['name']!r}, not torch_tpu", f"get the wheel from {SOPHGO_RELEASES}")
    if is_google(meta):
        raise InputError(f"{path} is Google's torch-tpu {meta['version']}, not Sophgo's", COLLISION)
    return digest, meta


def local_wheel(runner: Runner, location: str, cache: Path) -> Path | None:
    """The wheel as a local file: a path as it is (None when absent), a URL downloaded once to `cache`."""
    if "://" not in location or location.startswith("file://"):
        path = Path(location[len("file://"):] if location.startswith("file://") else location)
        return path if path.is_file() else None
    dest = cache / location.rstrip("/").rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    return runner.download(location, dest, hint="download it by hand and set [torch_tpu] wheel to the local path")
