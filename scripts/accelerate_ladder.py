#!/usr/bin/env python
"""Write the shipped accelerate ports (patches/accelerate-X-tpu.diff) from upstream's releases.

A maintainer's tool, not part of sd-env: it documents how each ported patch
was made and remakes them. For every release, in order, the newest shipped
patch is tried with `git apply --check` (offsets allowed, no fuzz); where it
no longer fits, our edit is made on that release's files and its diff becomes
a new shipped patch named by that release.

The edit has two forms, by where upstream builds the fp16 GradScaler:
- 0.20.0 to 1.0.x (in accelerator.py): a guarded module-level `import torch_tpu`,
  "tpu" added to the fp16 device list, and a torch_tpu GradScaler branch right
  after the FSDP branch, before the other vendors' (npu, mlu, xla, musa) branches.
- 1.1.0 on (the scaler comes from `get_grad_scaler` in utils/modeling.py): "tpu"
  in the fp16 device list (a tuple on one line, one device a line from 1.5.0,
  `supported_device` from 1.11.0) in accelerator.py; in utils/modeling.py the
  guarded import and a torch_tpu branch right after the helper's FSDP branch.
Releases before 0.20.0 take patches/accelerate-0.16.0-tpu.diff.

    python scripts/accelerate_ladder.py [SDIST_DIR] [--git REPO] [--write]

SDIST_DIR holds accelerate-X.tar.gz (pip download --no-deps --no-binary :all:);
REPO is a git repository with upstream's tags (the releases PyPI lacks: 1.1.0,
1.11.0 on). A release in both is read from its sdist (the same files as the tag).
Without --write it prints the table (release -> patch) only.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / "patches"
ACCELERATOR = "src/accelerate/accelerator.py"
MODELING = "src/accelerate/utils/modeling.py"
FILES = (ACCELERATOR, MODELING)
GIT = ["git", "-c", "user.name=sd-env", "-c", "user.email=sd-env@localhost", "-c", "core.autocrlf=false"]
FIRST = Version("0.16.0")

# The tags' commits (github.com/huggingface/accelerate), for the headers.
COMMITS = {
    "0.20.0": "9765b84f9c6e8cf6d81f9dc1d927bc99c69b5543",
    "0.21.0": "8514c35192ac9762920f1ab052e5cea4c0e46eeb",
    "0.23.0": "48d96319e0033fb8c8979072d97edf3995639029",
    "0.25.0": "d08c23c20975f39393b431143237c193733e7bb8",
    "0.28.0": "9e72c6129685b796841d9f426af9d98e60d9f1b0",
    "0.29.0": "ec88c8f54a1f938ef17becc0148cf8f77a7c26bc",
    "0.30.0": "989cc50c99fa72df57ded3e19a8efc18dc02869c",
}
IMPORT_ANCHOR = "import torch.utils.hooks as hooks\n"
MODELING_IMPORT_ANCHOR = "\nfrom safetensors import safe_open\n"
GUARDED_IMPORT = '''
# sd-env: Sophgo's torch_tpu plugin (PyTorch PrivateUse1 backend renamed "tpu"),
# not Google's XLA TPU (`is_tpu_available`, `is_torch_xla_available`). Imported
# once here, never inside a function, so that accelerate still works without it.
try:
    import torch_tpu
except ImportError:
    torch_tpu = None
'''
FP16_LIST = re.compile(r'(\n {12}if self\.device\.type not in \()([^)]*)(\))')
SUPPORTED = re.compile(r'(\n {12}supported_device = \()([^)]*)(\))')
SCALER_ANCHOR = "                self.scaler = ShardedGradScaler(**kwargs)\n"
SCALER_BRANCH = ('            elif torch_tpu is not None and self.device.type == "tpu":\n'
                 "                self.scaler = torch_tpu.tpu.amp.GradScaler(**kwargs)\n")
HELPER_CALL = "self.scaler = get_grad_scaler(self.distributed_type, **kwargs)"
HELPER_ANCHOR = "        return ShardedGradScaler(**kwargs)\n"
HELPER_BRANCH = ("    if torch_tpu is not None and torch_tpu.tpu.is_available():\n"
                 "        return torch_tpu.tpu.amp.GradScaler(**kwargs)\n")

HEADER = """Description: fp16 on Sophgo torch_tpu devices in accelerate {first}+ (device list and GradScaler)
 From accelerate 0.20.0 the fp16 check is a list of device types
 (`self.device.type not in ("cuda", "mps", ...)`) and later releases add
 their own GradScaler branches for other vendors (npu, xla, mlu). This port
 adds "tpu" (Sophgo's torch_tpu plugin, the PyTorch PrivateUse1 backend
 renamed "tpu"; not Google's XLA TPU, which accelerate calls
 is_tpu_available()/is_torch_xla_available() and whose device type is "xla")
 to that list, and a torch_tpu.tpu.amp.GradScaler branch right after the
 FSDP branch, before the other vendors' branches (a device-type test is
 more precise than their "is the plugin installed" tests).
 torch_tpu is imported once at module level and guarded, as in
 accelerate-0.16.0-tpu.diff; without torch_tpu the patched accelerate
 behaves exactly like upstream. No upstream release up to {newest} has this
 change. The device must still be chosen with ACCELERATE_TORCH_DEVICE=tpu:0
 (read by state.py since 0.16.0).
Origin: vendor, sd-env (ported from accelerate-0.16.0-tpu.diff by hand)
Upstream-Version: accelerate v{first} ({commit}; made on the {made_on})
Fits: accelerate {fits}
Forwarded: not-needed
Last-Update: {date}

"""

HELPER_HEADER = """Description: fp16 on Sophgo torch_tpu devices in accelerate {first}+ (device list and the GradScaler helper)
 From accelerate 1.1.0 the Accelerator no longer builds its GradScaler: it
 calls `get_grad_scaler(self.distributed_type, **kwargs)` from
 accelerate/utils/modeling.py, whose branches test whether each vendor's
 plugin is available (xla, mlu, musa, npu, xpu, ...; CUDA last). This port
 adds "tpu" (Sophgo's torch_tpu plugin, the PyTorch PrivateUse1 backend
 renamed "tpu"; not Google's XLA TPU, which accelerate calls
 is_torch_xla_available() and whose device type is "xla") to the fp16
 device list of accelerator.py, and a torch_tpu.tpu.amp.GradScaler branch
 to that helper right after its FSDP branch, before the other vendors'.
 The helper is given no device, so the branch tests what its neighbours
 test: the plugin is imported and has a device (torch_tpu.tpu.is_available()).
 torch_tpu is imported once at module level in utils/modeling.py and
 guarded, as in accelerate-0.16.0-tpu.diff (accelerator.py imports that
 module, so the "tpu" device is registered before the Accelerator picks
 it); without torch_tpu the patched accelerate behaves exactly like
 upstream. No upstream release up to {newest} has this change. The device
 must still be chosen with ACCELERATE_TORCH_DEVICE=tpu:0 (read by state.py).
Origin: vendor, sd-env (ported from accelerate-1.0.0-tpu.diff by hand)
Upstream-Version: accelerate v{first} ({commit}; made on the {made_on})
Fits: accelerate {fits}
Forwarded: not-needed
Last-Update: {date}

"""


def _once(text: str, anchor: str) -> None:
    if text.count(anchor) != 1:
        raise ValueError(f"anchor {anchor.strip()!r} found {text.count(anchor)} times")


def add_tpu(text: str) -> str:
    """"tpu" at the end of the fp16 device list of accelerator.py, in whichever form the release has."""
    for pattern in (SUPPORTED, FP16_LIST):
        match = pattern.search(text)
        if match is None:
            continue
        body = match.group(2)
        if body.rstrip(" ").endswith(",\n"):  # one device a line: one more line, same indent
            indent = re.search(r"\n( +)\"[^\"]*\",\n *$", body)
            assert indent is not None
            new = body.rstrip(" ") + f'{indent.group(1)}"tpu",\n' + body[len(body.rstrip(" ")):]
        else:
            new = body + ', "tpu"'
        return text[:match.start(2)] + new + text[match.end(2):]
    raise ValueError("fp16 device list not found")


def edit(files: dict[str, str]) -> dict[str, str]:
    """Our change on a 0.20+ release's files; raises if an anchor is not there exactly once."""
    accelerator = files[ACCELERATOR]
    if HELPER_CALL in accelerator:
        modeling = files[MODELING]
        for anchor in (MODELING_IMPORT_ANCHOR, HELPER_ANCHOR):
            _once(modeling, anchor)
        modeling = modeling.replace(MODELING_IMPORT_ANCHOR, GUARDED_IMPORT + MODELING_IMPORT_ANCHOR, 1)
        return {ACCELERATOR: add_tpu(accelerator),
                MODELING: modeling.replace(HELPER_ANCHOR, HELPER_ANCHOR + HELPER_BRANCH, 1)}
    for anchor in (IMPORT_ANCHOR, SCALER_ANCHOR):
        _once(accelerator, anchor)
    accelerator = accelerator.replace(IMPORT_ANCHOR, IMPORT_ANCHOR + GUARDED_IMPORT, 1)
    return {ACCELERATOR: add_tpu(accelerator).replace(SCALER_ANCHOR, SCALER_ANCHOR + SCALER_BRANCH, 1)}


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=True, check=check)


class Upstream:
    """Each release's files, from its PyPI sdist or else from the tag of a git repository."""

    def __init__(self, sdists: Path | None, repo: Path | None) -> None:
        self.archives = {a.name[11:-7]: a for a in sdists.glob("accelerate-*.tar.gz")} if sdists else {}
        tags = git(repo, "tag", "--list", "v*").stdout.split() if repo else []
        self.tags = {t[1:]: t for t in tags if re.fullmatch(r"v\d+\.\d+\.\d+", t)}
        self.repo = repo

    def releases(self) -> list[str]:
        found = {v for v in {*self.archives, *self.tags} if re.fullmatch(r"\d+\.\d+\.\d+", v)}
        return sorted((v for v in found if Version(v) >= FIRST), key=Version)

    def made_on(self, version: str) -> str:
        return "PyPI sdist, whose src/ is the tag's" if version in self.archives else "tag"

    def commit(self, version: str) -> str:
        if self.repo is not None and version in self.tags:
            return git(self.repo, "rev-parse", f"{self.tags[version]}^{{commit}}").stdout.strip()
        return COMMITS[version]

    def read(self, version: str) -> dict[str, bytes]:
        if version in self.archives:
            with tarfile.open(self.archives[version]) as tar:
                return {f: tar.extractfile(f"accelerate-{version}/{f}").read() for f in FILES}  # type: ignore[union-attr]
        assert self.repo is not None
        return {f: subprocess.run([*GIT, "-C", str(self.repo), "show", f"{self.tags[version]}:{f}"],
                                  capture_output=True, check=True).stdout for f in FILES}


def tree(where: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(data)
    git(where, "init", "-q")
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", "upstream")
    return where


def fits(repo: Path, patch: Path) -> bool:
    return git(repo, "apply", "--check", str(patch), check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdists", type=Path, nargs="?")
    parser.add_argument("--git", type=Path, help="a git repository with accelerate's tags")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--date", default="2026-11-29", help="Last-Update of the ports written")
    args = parser.parse_args(argv)
    upstream = Upstream(args.sdists, args.git)
    table: list[tuple[str, str]] = []
    ranges: dict[str, list[str]] = {}
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        current = PATCHES / "accelerate-0.16.0-tpu.diff"
        for version in upstream.releases():
            repo = tree(Path(tmp) / version, upstream.read(version))
            if not fits(repo, current):
                for name, text in edit({f: (repo / f).read_text() for f in FILES}).items():
                    (repo / name).write_text(text)
                texts[version] = git(repo, "diff", "--full-index").stdout
                git(repo, "checkout", "-q", "--", *FILES)
                current = Path(tmp) / f"accelerate-{version}-tpu.diff"
                current.write_text(texts[version])
                if not fits(repo, current):
                    raise SystemExit(f"{version}: our own diff does not apply back")
            table.append((version, current.name))
            ranges.setdefault(current.name, []).append(version)
        newest = table[-1][0]
        for version, name in table:
            print(f"{version:8} {name}")
        if args.write:
            for version, diff in texts.items():
                name = f"accelerate-{version}-tpu.diff"
                covered = ranges[name]
                span = covered[0] if len(covered) == 1 else f"{covered[0]} to {covered[-1]}"
                header = HELPER_HEADER if f"+++ b/{MODELING}" in diff else HEADER
                (PATCHES / name).write_text(header.format(
                    first=version, fits=span, commit=upstream.commit(version), made_on=upstream.made_on(version),
                    newest=newest, date=args.date) + diff)
                print(f"wrote patches/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
