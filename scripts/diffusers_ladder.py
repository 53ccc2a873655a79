#!/usr/bin/env python
"""Write the shipped ports of the diffusers LoRA example (patches/diffusers-X-train-lora.diff).

A maintainer's tool, not part of sd-env: it documents how each ported patch was
made and remakes them. The example (examples/text_to_image/train_text_to_image_lora.py)
is only in diffusers' git history, so the releases come from a git repository
with its tags. For every release from 0.20.0 on, in order, the nearest shipped
port not newer than the release is tried as `sd-env repatch` would: applied as
it is (offsets allowed), else merged 3-way from its pre-image. Where neither
works, our edit is made on that release's example and its diff becomes a new
shipped port named by that release.

The edit, what each release needs (tests/patching/test_diffusers_ladder.py proves each
part on the emulated device):
- the guarded `import torch_tpu`, just before `from accelerate import Accelerator`
  (those import lines have not changed from 0.20.0 to 0.40.0, so the hunk stays
  put; the two hand-made patches put it before `check_min_version`, which every
  release changes);
- the LoRA layers on the device before the optimizer collects their parameters:
  `AttnProcsLayers(...).to(accelerator.device)` up to 0.23.x; in 0.24.x, where
  the script makes LoRALinearLayer objects on the CPU, `attn_module.to(...)`
  before their parameters are collected; nothing from 0.25.0 on (peft makes the
  LoRA weights on the device of the layer they wrap: no longer needed);
- from 0.29.2 on (the SD 1.5 stack's line, diffusers-0.29.2-train-lora.diff):
  int32 timesteps and the weight_name of the final validation, as that patch has.

    python scripts/diffusers_ladder.py --git REPO [--write] [--date YYYY-MM-DD]

Without --write it prints the table (release -> patch, how) only.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PATCHES = ROOT / "patches"
EXAMPLE = "examples/text_to_image/train_text_to_image_lora.py"
GIT = ["git", "-c", "user.name=sd-env", "-c", "user.email=sd-env@localhost", "-c", "core.autocrlf=false"]
HAND_MADE = {"0.20.0", "0.29.2"}  # patches written by hand (the default stack's, the SD 1.5 stack's)
STACK_LINE = Version("0.29.2")  # from here on the ports carry the SD 1.5 stack's changes too

IMPORT_ANCHOR = "from accelerate import Accelerator\n"
GUARDED_IMPORT = '''# sd-env: Sophgo SC7 support. Importing torch_tpu registers the "tpu" device
# (ACCELERATE_TORCH_DEVICE=tpu:0) before accelerate picks it; without it the
# script still runs on CPU/GPU.
try:
    import torch_tpu  # noqa: F401
except ImportError:
    torch_tpu = None
'''
ATTN_PROCS = "    lora_layers = AttnProcsLayers(unet.attn_processors)\n"
LORA_LINEAR = "        # Accumulate the LoRA params to optimize.\n"
LORA_LINEAR_FIX = ('        # sd-env: the new LoRA layers on the device before their parameters are collected: on "tpu"\n'
                   "        # Module.to() makes new parameters, so the optimizer must get the moved ones.\n"
                   "        attn_module.to(accelerator.device)\n")
TIMESTEPS = re.compile(r"( +)timesteps = torch\.randint\(0, noise_scheduler\.config\.num_train_timesteps, \(bsz,\), "
                       r"device=latents\.device\)\n +timesteps = timesteps\.long\(\)\n")
INT32 = ('{i}# sd-env: int32, not int64 (.long()): int64 tensors are unsupported on the SC7. Drawn as int32\n'
         '{i}# so no int64 tensor is made on the device; the scheduler and the UNet take int32 timesteps.\n'
         '{i}timesteps = torch.randint(\n'
         '{i}    0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device, dtype=torch.int32\n'
         '{i})\n')
LOAD = re.compile(r"( +)pipeline\.load_lora_weights\(args\.output_dir\)\n")
WEIGHT_NAME = ('{i}# sd-env: name the file save_lora_weights wrote: without a weight_name, diffusers 0.29 refuses to\n'
               '{i}# load it in offline mode (HF_HUB_OFFLINE=1, the usual case on hosts without the Hugging Face Hub).\n'
               '{i}pipeline.load_lora_weights(args.output_dir, weight_name="pytorch_lora_weights.safetensors")\n')

HEADER = """Description: Sophgo torch_tpu support in the text-to-image LoRA example of diffusers {first}+
 Import torch_tpu (guarded, so the script still runs on CPU and GPU machines
 without it), which registers the "tpu" device used through
 ACCELERATE_TORCH_DEVICE=tpu:0: just before `from accelerate import
 Accelerator`, so the device exists before accelerate picks it. Still needed
 on every release: with an upstream accelerate (which does not import
 torch_tpu) the example stops at Accelerator() on "tpu:0" without it.
{placement}{stack}Origin: vendor, sd-env (ported from {origin} by hand, scripts/diffusers_ladder.py)
Upstream-Version: diffusers v{first} ({commit})
Fits: diffusers {fits}
Forwarded: not-needed
Last-Update: {date}

"""
PLACEMENT = {
    "attn-procs": """ Move the LoRA attention-processor layers to accelerator.device explicitly:
 AttnProcsLayers(...).to(accelerator.device). Still needed: without it the
 optimizer steps the CPU copies (on "tpu" Module.to() makes new parameters)
 and the LoRA weights do not move (proven on the emulated device).
""",
    "lora-linear": """ Move each attention module, with the LoRALinearLayer objects the script has
 just made on the CPU, to accelerator.device before their parameters are
 collected for the optimizer: the AttnProcsLayers line of the 0.20.0 patch is
 gone (0.24.0 sets LoRA layers on the attention projections), the need is not:
 without it the first step fails with "Expected all tensors to be on the same
 device, ... tpu:0 and cpu" (proven on the emulated device).
""",
    "peft": """ No longer needed (dropped): the placement fix of diffusers-0.20.0-train-lora.diff.
 Since the move to peft the script moves the UNet to accelerator.device before
 `unet.add_adapter()`, and peft creates the LoRA weights on the device of the
 layer they wrap: the unpatched example trains on "tpu" (its LoRA weights
 move; proven on the emulated device).
""",
}
STACK = """ As diffusers-0.29.2-train-lora.diff (the SD 1.5 stack's): the training
 timesteps drawn as int32 instead of int64 (`timesteps.long()`; int64 tensors
 are unsupported on the device; the scheduler and the UNet take int32), and
 the final validation names the weights file (`weight_name=
 "pytorch_lora_weights.safetensors"`: diffusers refuses to guess it offline).
"""


def git(repo: Path, *args: str, check: bool = True, text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=text, check=check)


def placement(text: str) -> str:
    if ATTN_PROCS in text:
        return "attn-procs"
    if LORA_LINEAR in text:
        return "lora-linear"
    return "peft"


def edit(text: str, version: Version) -> str:
    """Our change on a release's example; raises if an anchor is not there exactly once."""
    if text.count(IMPORT_ANCHOR) != 1:
        raise ValueError(f"{IMPORT_ANCHOR.strip()!r} found {text.count(IMPORT_ANCHOR)} times")
    text = text.replace(IMPORT_ANCHOR, GUARDED_IMPORT + IMPORT_ANCHOR, 1)
    form = placement(text)
    if form == "attn-procs":
        text = text.replace(ATTN_PROCS, ATTN_PROCS.rstrip("\n") + ".to(accelerator.device)\n", 1)
    elif form == "lora-linear":
        text = text.replace(LORA_LINEAR, LORA_LINEAR_FIX + LORA_LINEAR, 1)
    if version >= STACK_LINE:
        text, n = TIMESTEPS.subn(lambda m: INT32.format(i=m.group(1)), text, count=1)
        text, k = LOAD.subn(lambda m: WEIGHT_NAME.format(i=m.group(1)), text, count=1)
        if (n, k) != (1, 1):
            raise ValueError(f"timesteps found {n} times, load_lora_weights {k} times")
    return text


class Release:
    """One release's example in a scratch repository that also holds every pre-image a port names."""

    def __init__(self, upstream: Path, tag: str, where: Path) -> None:
        self.upstream, self.tag, self.repo = upstream, tag, where
        (where / EXAMPLE).parent.mkdir(parents=True)
        (where / EXAMPLE).write_bytes(subprocess.run([*GIT, "--git-dir", str(upstream), "show", f"{tag}:{EXAMPLE}"],
                                                     capture_output=True, check=True).stdout)
        git(where, "init", "-q")
        git(where, "add", "-A")
        git(where, "commit", "-q", "-m", tag)

    def how(self, patch: Path) -> str | None:
        """How `patch` gets onto this release: "exact"/"offset", "3-way", or None."""
        trial = git(self.repo, "apply", "--check", "-v", str(patch), check=False)
        if trial.returncode == 0:
            return "offset" if "(offset" in trial.stderr else "exact"
        for blob in re.findall(r"^index ([0-9a-f]{40})\.\.", patch.read_text(), re.M):
            data = subprocess.run([*GIT, "--git-dir", str(self.upstream), "cat-file", "blob", blob],
                                  capture_output=True).stdout
            subprocess.run([*GIT, "-C", str(self.repo), "hash-object", "-w", "--stdin"], input=data,
                           capture_output=True, check=True)
        merged = git(self.repo, "apply", "-3", str(patch), check=False)
        unmerged = git(self.repo, "diff", "--name-only", "--diff-filter=U").stdout.strip()
        git(self.repo, "reset", "-q", "--hard")
        return "3-way" if merged.returncode == 0 and not unmerged else None

    def port(self) -> str:
        path = self.repo / EXAMPLE
        path.write_text(edit(path.read_text(), Version(self.tag[1:])))
        diff = git(self.repo, "diff", "--full-index").stdout
        git(self.repo, "checkout", "-q", "--", EXAMPLE)
        return diff


def releases(upstream: Path) -> list[str]:
    tags = git(upstream, "tag", "--list", "v0.*").stdout.split()
    found = [t for t in tags if re.fullmatch(r"v0\.\d+\.\d+", t) and Version(t[1:]) >= Version("0.20.0")]
    return sorted(found, key=lambda t: Version(t[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git", type=Path, required=True, help="a git repository with diffusers' tags")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--date", default="2026-12-05", help="Last-Update of the ports written")
    args = parser.parse_args(argv)
    rungs = {v: PATCHES / f"diffusers-{v}-train-lora.diff" for v in HAND_MADE}
    made: dict[str, tuple[str, str, str]] = {}  # version -> (diff, commit, form)
    table: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for tag in releases(args.git):
            version = tag[1:]
            release = Release(args.git, tag, Path(tmp) / version)
            nearest = max((v for v in rungs if Version(v) <= Version(version)), key=Version)
            how = release.how(rungs[nearest])
            if how is None:
                diff = release.port()
                path = Path(tmp) / f"diffusers-{version}-train-lora.diff"
                path.write_text(diff)
                commit = git(args.git, "rev-parse", f"{tag}^{{commit}}").stdout.strip()
                made[version] = (diff, commit, placement(release.repo.joinpath(EXAMPLE).read_text()))
                rungs[version], nearest, how = path, version, "new port"
            table.append((version, rungs[nearest].name, how))
    for version, name, how in table:
        print(f"{version:8} {name:36} {how}")
    if args.write:
        for version, (diff, commit, form) in made.items():
            name = f"diffusers-{version}-train-lora.diff"
            covered = [v for v, n, _ in table if n == name]
            span = covered[0] if len(covered) == 1 else f"{covered[0]} to {covered[-1]}"
            stack = Version(version) >= STACK_LINE
            header = HEADER.format(first=version, placement=PLACEMENT[form], stack=STACK if stack else "",
                                   origin="diffusers-0.29.2-train-lora.diff" if stack else
                                   "diffusers-0.20.0-train-lora.diff", commit=commit, fits=span, date=args.date)
            (PATCHES / name).write_text(header + diff)
            print(f"wrote patches/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
