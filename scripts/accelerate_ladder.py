#!/usr/bin/env python
"""Write the shipped accelerate ports (patches/accelerate-X-tpu.diff) from the PyPI sdists.

A maintainer's tool, not part of sd-env: it documents how each ported patch
was made and remakes them. For every release, in order, the newest shipped
patch is tried with `git apply --check` (offsets allowed, no fuzz); where it
no longer fits, our edit is made on that release's accelerator.py and its
diff becomes a new shipped patch named by that release.

The edit (from 0.20.0, where upstream turned the fp16 check into a device
list): a guarded module-level `import torch_tpu`, "tpu" added to the fp16
device list, and a torch_tpu GradScaler branch placed right after the FSDP
branch, before the other vendors' (npu, mlu, xla) branches. Releases before
0.20.0 take patches/accelerate-0.16.0-tpu.diff.

    python scripts/accelerate_ladder.py SDIST_DIR [--write]

SDIST_DIR holds accelerate-X.tar.gz (pip download --no-deps --no-binary :all:).
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
FILE = "src/accelerate/accelerator.py"
GIT = ["git", "-c", "user.name=sd-env", "-c", "user.email=sd-env@localhost", "-c", "core.autocrlf=false"]

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
SCALER_ANCHOR = "                self.scaler = ShardedGradScaler(**kwargs)\n"
SCALER_BRANCH = ('            elif torch_tpu is not None and self.device.type == "tpu":\n'
                 "                self.scaler = torch_tpu.tpu.amp.GradScaler(**kwargs)\n")

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
 behaves exactly like upstream. No upstream release up to 0.30.1 has this
 change. The device must still be chosen with ACCELERATE_TORCH_DEVICE=tpu:0
 (read by state.py since 0.16.0).
Origin: vendor, sd-env (ported from accelerate-0.16.0-tpu.diff by hand)
Upstream-Version: accelerate v{first} ({commit}; made on the PyPI sdist, whose src/ is the tag's)
Fits: accelerate {fits}
Forwarded: not-needed
Last-Update: 2026-11-29

"""


def edit(text: str) -> str:
    """Our change on a 0.20+ accelerator.py; raises if an anchor is not there exactly once."""
    for anchor in (IMPORT_ANCHOR, SCALER_ANCHOR):
        if text.count(anchor) != 1:
            raise ValueError(f"anchor {anchor.strip()!r} found {text.count(anchor)} times")
    text = text.replace(IMPORT_ANCHOR, IMPORT_ANCHOR + GUARDED_IMPORT, 1)
    text, n = FP16_LIST.subn(lambda m: f'{m.group(1)}{m.group(2)}, "tpu"{m.group(3)}', text, count=1)
    if n != 1:
        raise ValueError("fp16 device list not found")
    return text.replace(SCALER_ANCHOR, SCALER_ANCHOR + SCALER_BRANCH, 1)


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=True, check=check)


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"{archive.name[:-len('.tar.gz')]}/{FILE}")
        data = tar.extractfile(member)
        assert data is not None
        repo = into / archive.name[:-len(".tar.gz")]
        (repo / FILE).parent.mkdir(parents=True)
        (repo / FILE).write_bytes(data.read())
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "upstream")
    return repo


def fits(repo: Path, patch: Path) -> bool:
    return git(repo, "apply", "--check", str(patch), check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdists", type=Path)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    archives = sorted(args.sdists.glob("accelerate-*.tar.gz"), key=lambda p: Version(p.name[11:-7]))
    table: list[tuple[str, str]] = []
    ranges: dict[str, list[str]] = {}
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        current = PATCHES / "accelerate-0.16.0-tpu.diff"
        for archive in archives:
            version = archive.name[11:-7]
            repo = unpack(archive, Path(tmp))
            if not fits(repo, current):
                path = repo / FILE
                path.write_text(edit(path.read_text()))
                texts[version] = git(repo, "diff", "--full-index").stdout
                git(repo, "checkout", "-q", "--", FILE)
                current = Path(tmp) / f"accelerate-{version}-tpu.diff"
                current.write_text(texts[version])
                if not fits(repo, current):
                    raise SystemExit(f"{version}: our own diff does not apply back")
            name = current.name
            table.append((version, name))
            ranges.setdefault(name, []).append(version)
    for version, name in table:
        print(f"{version:8} {name}")
    if args.write:
        for version, diff in texts.items():
            name = f"accelerate-{version}-tpu.diff"
            covered = ranges[name]
            span = covered[0] if len(covered) == 1 else f"{covered[0]} to {covered[-1]}"
            (PATCHES / name).write_text(HEADER.format(first=version, fits=span, commit=COMMITS[version]) + diff)
            print(f"wrote patches/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
