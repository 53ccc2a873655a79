"""Manifest validation through the CLI, the repository's own manifest, and its patch files.

A malformed manifest is an exit-2 error naming the file, the key and what to
write instead (an `error:` line and a `hint:` line on stderr).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core import manifest
from sd_env.patching import patches
from tests.conftest import ROOT

ACCELERATE_COMMIT = "36beea9a1be9251a3ad07f7c10fd425c96954f46"
DIFFUSERS_COMMIT = "e3380c02cf177a8027efea5d233afa9abb1870da"
EXAMPLE = ("examples/text_to_image/train_text_to_image_lora.py",)
ACCELERATOR = ("src/accelerate/accelerator.py",)
PATCH_TARGETS = {"accelerate-0.16.0-tpu.diff": ACCELERATOR, "diffusers-0.20.0-train-lora.diff": EXAMPLE}
# Patches of the other shipped stacks and the ladders' shipped ports (tests/patching/test_accelerate_ladder.py,
# tests/patching/test_diffusers_ladder.py); from accelerate 1.1.0 the scaler is built in utils/modeling.py.
OTHER_TARGETS = {
    **{f"diffusers-{v}-train-lora.diff": EXAMPLE for v in ("0.22.0", "0.24.0", "0.25.0", "0.29.2")},
    **{f"accelerate-{v}-tpu.diff": ACCELERATOR
       for v in ("0.20.0", "0.21.0", "0.23.0", "0.25.0", "0.28.0", "0.29.0", "0.30.0", "0.32.0", "0.33.0", "1.0.0")},
    **{f"accelerate-{v}-tpu.diff": (*ACCELERATOR, "src/accelerate/utils/modeling.py")
       for v in ("1.1.0", "1.5.0", "1.11.0")},
    # Opt-in: the multi-process "tpu" patch goes on the pin's tree after accelerate-0.16.0-tpu.diff
    # only where a stack asks for several devices (the shipped sc7-sd14-lora-multi; the default does not); the
    # same for 0.30.1 after accelerate-0.30.0-tpu.diff (sc7-sd15-lora-multi; tests/workflows/test_multi_device_28.py).
    "accelerate-0.16.0-tpu-multi.diff": ("src/accelerate/accelerator.py", "src/accelerate/commands/launch.py",
                                         "src/accelerate/state.py"),
    "accelerate-0.30.0-tpu-multi.diff": ("src/accelerate/commands/launch.py", "src/accelerate/state.py"),
}
# Named after the port they go on top of, but made on the release a shipped stack pins (v0.30.1 there).
MADE_ON_PIN = {"accelerate-0.30.0-tpu-multi.diff": "sc7-sd15-lora.toml"}

# The shape of manifests/sc7-sd14-lora.toml; {patches} is a folder holding dummy patch files.
BASE = f'''schema = 1
name = "sc7-sd14-lora"
python = "3.9"
device = "tpu:0"
patches_dir = "{{patches}}"

[torch]
requirements = ["torch==2.1.0", "torchvision==0.16.0", "torchaudio==2.1.0"]
index = "https://download.pytorch.org/whl/cpu"
fallback_index = "https://pypi.org/simple"

[torch_tpu]
wheel = "../wheels/torch_tpu-2.1.0.post1-cp39-cp39-linux_x86_64.whl"

[lock]
requirements = "requirements.in"
platform = "x86_64-unknown-linux-gnu"
exclude_newer = "2023-08-31T00:00:00Z"
exclude_newer_package = {{ torch = "2023-10-06T00:00:00Z" }}
files = {{ pypi = "sc7-sd14-lora.pypi.lock.txt" }}

[[component]]
name = "accelerate"
git = "https://github.com/huggingface/accelerate.git"
tag = "v0.16.0"
version = "0.16.0"
commit = "{ACCELERATE_COMMIT}"
patches = ["accelerate-0.16.0-tpu.diff"]

[[component]]
name = "diffusers"
git = "https://github.com/huggingface/diffusers.git"
tag = "v0.20.0"
version = "0.20.0"
commit = "{DIFFUSERS_COMMIT}"
patches = ["diffusers-0.20.0-train-lora.diff"]

[[component]]
name = "transformers"
git = "https://github.com/huggingface/transformers.git"
tag = "v4.29.1"
version = "4.29.1"
'''

ACC = f'tag = "v0.16.0"\nversion = "0.16.0"\ncommit = "{ACCELERATE_COMMIT}"\n'

# id: (text to replace, replacement, key named, text of the hint line, other text expected)
CASES = {
    "toml-syntax": ('name = "sc7-sd14-lora"\n', 'name = "sc7-sd14-lora\n', "not valid TOML",
                    "fix the syntax at the line and column", "(at line 2, column "),
    "unknown-top-level-key": ('python = "3.9"', 'pyhton = "3.9"', "pyhton: unknown key",
                              "did you mean 'python'?", ""),
    "unknown-component-key": ('tag = "v0.20.0"', 'tagg = "v0.20.0"', "component[1].tagg: unknown key",
                              "did you mean 'tag'?", ""),
    "unknown-key-in-torch": ('fallback_index =', 'fallback_idx =', "torch.fallback_idx: unknown key",
                             "did you mean 'fallback_index'?", ""),
    "missing-key": ('git = "https://github.com/huggingface/accelerate.git"\n', "",
                    "component[0].git: missing", 'add git = "..."', ""),
    "missing-table": ('[torch]\n', '[torch_cpu]\n', "torch_cpu: unknown key", "did you mean 'torch'?", ""),
    "bad-version": ('version = "0.16.0"', 'version = "0.16.x"', "component[0].version",
                    'write the release version, e.g. "0.16.0"', "'0.16.x' is not a version"),
    "bad-commit": (ACCELERATE_COMMIT, "36beea9a1be9", "component[0].commit", "write all 40 hex digits",
                   "'36beea9a1be9' is not a full commit id"),
    "uppercase-commit": (ACCELERATE_COMMIT, ACCELERATE_COMMIT.upper(), "component[0].commit",
                         "write all 40 hex digits", "is not a full commit id"),
    "patch-missing": ('["accelerate-0.16.0-tpu.diff"]', '["accelerate-0.16.0-tpo.diff"]',
                      "component[0].patches[0]", "put the patch in {patches} or correct the name",
                      "no patch file at {patches}/accelerate-0.16.0-tpo.diff"),
    "patch-not-a-string": ('["accelerate-0.16.0-tpu.diff"]', '[1]', "component[0].patches[0]",
                           'write it as a string, e.g. "accelerate-0.16.0-tpu.diff"', "must be a file name"),
    "duplicate-name": ('name = "diffusers"', 'name = "accelerate"', "component[1].name",
                       "give each [[component]] its own name", "'accelerate' is declared twice"),
    "duplicate-name-normalized": ('name = "diffusers"', 'name = "Accelerate"', "component[1].name",
                                  "give each [[component]] its own name",
                                  "'Accelerate' is declared twice (as 'accelerate')"),
    "wrong-type": ('tag = "v0.16.0"', "tag = 1", "component[0].tag: must be a string, not an integer",
                   'write it as a string, e.g. tag = "..."', ""),
    "bool-is-not-int": ("schema = 1", "schema = true", "schema: must be an integer, not a boolean",
                        "write it as an integer, e.g. schema = 1", ""),
    "table-not-array": ("[[component]]\nname = \"transformers\"", "[component]\nname = \"transformers\"",
                        "not valid TOML", "fix the syntax", "(at line "),
    "schema": ("schema = 1", "schema = 2", "schema: schema 2 is not supported", "write schema = 1", ""),
    "requirement-not-pinned": ('"torch==2.1.0", "torchvision', '"torch>=2.1", "torchvision',
                               "torch.requirements[0]", 'write NAME==VERSION, e.g. "torch==2.1.0"',
                               "'torch>=2.1' is not an exact pin"),
    "requirement-wildcard": ('"torchaudio==2.1.0"', '"torchaudio==2.1.*"', "torch.requirements[2]",
                             "write NAME==VERSION", "is not an exact pin"),
    "device": ('device = "tpu:0"', 'device = "TPU 0"', "device", 'write it like "tpu:0"',
               "'TPU 0' is not a torch device string"),
    "python": ('python = "3.9"', 'python = "3.9.18"', "python", 'write it as "3.9"',
               "'3.9.18' is not a Python minor version"),
    "torch-tpu-sha256": ('linux_x86_64.whl"\n', 'linux_x86_64.whl"\nsha256 = "abc123"\n', "torch_tpu.sha256",
                         "paste the output of `sha256sum` for the wheel", "not a sha256"),
    "git-url": ('git = "https://github.com/huggingface/accelerate.git"', 'git = "huggingface/accelerate"',
                "component[0].git", "write the clone URL", "is not a git URL"),
    "build-mode": (ACC, ACC + 'build = "wheel"\n', "component[0].build", "write one of: editable",
                   "unknown build mode 'wheel'"),
    "lock-timestamp": ('exclude_newer = "2023-08-31T00:00:00Z"', 'exclude_newer = "2023-08-31"',
                       "lock.exclude_newer", 'write it like "2023-08-31T00:00:00Z"',
                       "is not a UTC timestamp"),
    "lock-flavour": ("files = { pypi =", "files = { cuda =", "lock.files.cuda", "use one of: cpu, pypi",
                     "unknown torch flavour"),
}


@pytest.fixture
def patches_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "patches"
    folder.mkdir()
    for name in PATCH_TARGETS:
        (folder / name).write_text("Description: dummy\n")
    return folder


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifests" / "sc7-sd14-lora.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def base_text(patches_dir: Path) -> str:
    return BASE.replace("{patches}", str(patches_dir))


def test_base_manifest_is_valid(tmp_path, patches_dir):
    man = manifest.load(write(tmp_path, base_text(patches_dir)))
    assert [c.name for c in man.components] == ["accelerate", "diffusers", "transformers"]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_malformed_manifest_is_exit_2_naming_file_key_and_fix(tmp_path, patches_dir, capsys, case):
    old, new, key, hint, problem = (s.replace("{patches}", str(patches_dir)) for s in CASES[case])
    text = base_text(patches_dir)
    assert text.count(old) == 1, f"the case's text must occur once in the base manifest: {old!r}"
    path = write(tmp_path, text.replace(old, new))
    home = tmp_path / "home"
    assert main(["status", "-m", str(path), "--home", str(home)]) == 2
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert lines[0].startswith(f"error: {path}: "), out.err
    assert key in lines[0], out.err
    assert problem in lines[0], out.err
    assert [ln for ln in lines[1:] if ln.startswith(f"hint: {hint}")], out.err
    assert out.out == ""
    assert not home.exists()  # nothing is created for a manifest that cannot be used


def test_install_with_a_missing_patch_file_is_exit_2_before_doing_anything(tmp_path, patches_dir, capsys):
    (patches_dir / "diffusers-0.20.0-train-lora.diff").unlink()
    path = write(tmp_path, base_text(patches_dir))
    home = tmp_path / "home"
    assert main(["install", "-m", str(path), "--home", str(home), "--python", "/nonexistent/python"]) == 2
    err = capsys.readouterr().err
    missing = patches_dir / "diffusers-0.20.0-train-lora.diff"
    assert f"error: {path}: component[1].patches[0]: no patch file at {missing}" in err
    assert f"hint: put the patch in {patches_dir} or correct the name" in err
    assert not home.exists()


def test_manifest_that_cannot_be_read_is_exit_2(tmp_path, capsys):
    path = tmp_path / "nope.toml"
    assert main(["status", "-m", str(path), "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: cannot read the manifest" in err and "hint: pass an existing file" in err


def test_non_table_component_names_the_double_brackets(tmp_path, patches_dir, capsys):
    head, _, _ = base_text(patches_dir).partition("[[component]]")
    path = write(tmp_path, head.replace("schema = 1\n", 'schema = 1\ncomponent = ["accelerate"]\n'))
    assert main(["status", "-m", str(path), "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: component[0]: must be a table, not a string" in err
    assert "hint: write it as a [[component]] table" in err


def test_repository_manifest_pins_the_tutorial_stack():
    man = manifest.load(ROOT / "manifests" / "sc7-sd14-lora.toml")
    assert (man.python, man.device) == ("3.9", "tpu:0")
    assert man.torch.requirements == ("torch==2.1.0", "torchvision==0.16.0", "torchaudio==2.1.0")
    by_name = {c.name: c for c in man.components}
    assert list(by_name) == ["accelerate", "diffusers", "transformers"]
    pins = {name: (c.tag, c.version, c.commit, [p.name for p in c.patches], c.build)
            for name, c in by_name.items()}
    assert pins == {
        "accelerate": ("v0.16.0", "0.16.0", ACCELERATE_COMMIT, list(PATCH_TARGETS)[:1], "editable"),
        "diffusers": ("v0.20.0", "0.20.0", DIFFUSERS_COMMIT, list(PATCH_TARGETS)[1:], "editable"),
        "transformers": ("v4.29.1", "4.29.1", None, [], "editable"),
    }
    for comp in man.components:
        for path in comp.patches:
            assert path.resolve() == ROOT / "patches" / path.name
    assert man.lock is not None and man.lock.files["pypi"].is_file()


@pytest.mark.parametrize("base,multi_patch", [("sc7-sd14-lora", "accelerate-0.16.0-tpu-multi.diff"),
                                               ("sc7-sd15-lora", "accelerate-0.30.0-tpu-multi.diff")])
def test_multi_device_stack_is_its_base_plus_the_multi_patch(base, multi_patch):
    """BASE-multi: the same pins and lock as BASE, accelerate's multi-device patch after BASE's own; BASE
    keeps its patch alone (the repatch ladders port only that one)."""
    default = manifest.load(ROOT / "manifests" / f"{base}.toml")
    multi = manifest.load(ROOT / "manifests" / f"{base}-multi.toml")
    assert multi.name == f"{base}-multi" and multi.description != default.description
    assert (multi.python, multi.device, multi.torch, multi.torch_tpu, multi.lock, multi.model, multi.emulator) == (
        default.python, default.device, default.torch, default.torch_tpu, default.lock, default.model,
        default.emulator)
    patched = [[p.name for p in c.patches] for c in multi.components]
    assert patched[0] == [*[p.name for p in default.components[0].patches], multi_patch]
    assert [(c.name, c.tag, c.commit) for c in multi.components] == [(c.name, c.tag, c.commit)
                                                                     for c in default.components]
    assert patched[1:] == [[p.name for p in c.patches] for c in default.components[1:]]


def repository_patches() -> list[Path]:
    return sorted((ROOT / "patches").iterdir())


@pytest.mark.parametrize("path", repository_patches(), ids=lambda p: p.name)
def test_repository_patch_has_header_one_file_and_full_index(path):
    used = {p.name: c for c in manifest.load(ROOT / "manifests" / "sc7-sd14-lora.toml").components
            for p in c.patches}
    assert path.name in used or path.name in OTHER_TARGETS, f"{path.name} is not used by the default manifest"
    patch = patches.load(path)
    for field in ("Description", "Origin", "Upstream-Version", "Forwarded", "Last-Update"):
        assert patch.header.get(field), f"{path.name}: no {field} in the DEP-3 header"
    if path.name in used:
        comp = used[path.name]
        assert comp.tag in patch.header["Upstream-Version"] and comp.commit in patch.header["Upstream-Version"]
    elif path.name in MADE_ON_PIN:  # named after the port it follows, made on a shipped stack's pin
        comp = manifest.load(ROOT / "manifests" / MADE_ON_PIN[path.name]).component(path.name.split("-")[0])
        assert patch.header["Upstream-Version"].startswith(f"{comp.name} {comp.tag} ({comp.commit}")
    else:  # named by the release it was made on, with that tag's commit
        version = re.search(r"-(\d+\.\d+\.\d+)-", path.name).group(1)  # type: ignore[union-attr]
        assert re.match(rf"\w+ v{re.escape(version)} \([0-9a-f]{{40}}", patch.header["Upstream-Version"])
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", patch.header["Last-Update"])
    assert [f.path for f in patch.files] == list({**PATCH_TARGETS, **OTHER_TARGETS}[path.name])
    assert not any(f.added or f.removed for f in patch.files)
    index_lines = [ln for ln in patch.text.splitlines() if ln.startswith("index ")]
    assert len(index_lines) == len(patch.files)
    for line in index_lines:
        assert re.fullmatch(r"index [0-9a-f]{40}\.\.[0-9a-f]{40}( \d{6})?", line), line


def test_single_bracket_component_table_names_the_double_brackets(tmp_path, patches_dir, capsys):
    head, _, _ = base_text(patches_dir).partition("[[component]]")
    path = write(tmp_path, head + '[component]\nname = "accelerate"\n')
    assert main(["status", "-m", str(path), "--home", str(tmp_path / "home")]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: component: must be an array of tables, not a table" in err
    assert "hint: write each one under [[component]] (two brackets)" in err
