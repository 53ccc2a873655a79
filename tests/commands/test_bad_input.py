"""The bad-input corpus: hostile or broken manifests, patches, locks, wheels, state files and homes.

Each case breaks one input of an installed tiny project, runs sd-env, and checks
that the error names the problem and that nothing changed on disk: the home
(its logs/ and the lock file aside, which every run writes), the project's
manifest and patches, and the target venv (by file size, mode and mtime).
Most cases fail before anything is installed, so one target is shared.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_env.cli import main
from tests.conftest import TPU_PATCH, Project, Upstream, git, make_upstream, run_in, tiny_component
from tests.kit.faultkit import lock_text, make_wheel, tree_hash

PATCH = "tinypkg-1.0-tpu.diff"
WHEEL = "torch_tpu-2.1.0-cp39-cp39-linux_x86_64.whl"


@dataclass
class Home:
    project: Project
    upstream: Upstream
    python: Path
    wheels: Path

    @property
    def patch(self) -> Path:
        return self.project.root / "patches" / PATCH


@pytest.fixture(scope="module")
def installed(tmp_path_factory, target_python) -> Home:
    """tinypkg v1.0 with the TPU patch, installed editable into a venv of this module."""
    base = tmp_path_factory.mktemp("corpus")
    up = make_upstream(base)
    commit = git(up.repo, "rev-parse", "HEAD")
    where = base / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    site = run_in(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    shared = run_in(target_python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(site, "_shared_build_tools.pth").write_text(shared + "\n")
    project = Project(base / "project")
    project.add_patch(PATCH, up.diff(TPU_PATCH))
    project.write_manifest([tiny_component(up, commit, [PATCH])])
    assert project.cli("install", python=python) == 0
    wheels = base / "wheels"
    make_wheel(wheels, "tinydep", "1.0")
    return Home(project, up, python, wheels)


def _target_stat(python: Path) -> dict[str, tuple]:
    root = python.parents[1]
    return {str(p): (p.lstat().st_size, p.lstat().st_mode, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _home_hash(home: Home) -> dict[str, str]:
    got = tree_hash(home.project.root)
    # What every run may write: its log, and (run, shell, status) the target's inventory kept for the next.
    written = (str(home.project.home / "logs"), str(home.project.home / "cache"))
    return {k: v for k, v in got.items() if not k.startswith(written) and not k.endswith("sd-env.lock")}


@pytest.fixture
def case(installed, monkeypatch, capsys) -> Iterator[Callable[..., tuple[int, str]]]:
    """Run sd-env on the broken home; assert nothing changed; put the inputs back afterwards."""
    project = installed.project
    saved = {p: p.read_bytes() for p in [project.manifest, installed.patch, project.home / "state.json"]}
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(installed.wheels))

    def run(*args: str, python: Path | None = None, home: Path | None = None, changes_ok: bool = False):
        before = (_home_hash(installed), _target_stat(installed.python))
        argv = [args[0], "-m", str(project.manifest), "--home", str(home or project.home),
                "--python", str(python or installed.python), *args[1:]]
        capsys.readouterr()
        code = main(argv)
        out = capsys.readouterr()
        after = (_home_hash(installed), _target_stat(installed.python))
        if not changes_ok:
            assert after[0] == before[0], "the home or the project changed"
            assert after[1] == before[1], "the target changed"
        return code, out.out + out.err

    yield run
    for leftover in (project.manifest, project.root / "manifests" / "loop"):
        if leftover.is_symlink():
            leftover.unlink()
    for path, data in saved.items():
        path.write_bytes(data)
    (project.root / "manifests" / "test.lock.txt").unlink(missing_ok=True)


def _manifest(home: Home, edit: Callable[[str], str]) -> None:
    home.project.manifest.write_text(edit(home.project.manifest.read_text()))


# --- manifests -------------------------------------------------------------------------------------------

MANIFESTS = {
    "unknown key": (lambda t: 'colour = "blue"\n' + t, "colour: unknown key"),
    "wrong type": (lambda t: t.replace('python = "3', "python = 3").replace('.9"', ".9", 1).replace(
        f'{sys.version_info[1]}"\ndevice', f"{sys.version_info[1]}\ndevice"), "python: must be"),
    "patch outside the patches folder": (lambda t: t.replace(f'"{PATCH}"', '"../../outside.diff"'),
                                         "is outside the patches folder"),
    "huge file": (lambda t: t + "#" * (2 << 20) + "\n", "larger than 1024 KiB"),
    "not TOML": (lambda t: t + "[[component]\n", "not valid TOML"),
    "empty lock files": (lambda t: t.replace('[torch]', '[lock]\nrequirements = "r.in"\n'
                                             'exclude_newer = "2023-08-31T00:00:00Z"\nfiles = {}\n[torch]'),
                         "lock.files: lists no lock file"),
    "component twice": (lambda t: t + "\n" + t[t.index("[[component]]"):], "is declared twice"),
    "hostile git URL": (lambda t: t.replace('git = "file://', 'git = "ext::sh -c touch% /tmp/pwned #'),
                        "is not a git URL"),
    "wrong schema": (lambda t: t.replace("schema = 1", "schema = 99"), "schema 99 is not supported"),
}


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_bad_manifest(installed, case, name):
    edit, expected = MANIFESTS[name]
    _manifest(installed, edit)
    code, text = case("install")
    assert code == 2 and expected in text and str(installed.project.manifest) in text, text


def test_manifest_symlink_loop(installed, case):
    manifest = installed.project.manifest
    loop = manifest.parent / "loop"
    manifest.unlink()
    manifest.symlink_to(loop)
    loop.symlink_to(manifest)
    code, text = case("install")
    assert code == 2 and "cannot read the manifest" in text and "symbolic links" in text, text


# --- patches ---------------------------------------------------------------------------------------------

PATCHES: dict[str, tuple[Callable[[Home], bytes], str]] = {
    "path outside": (lambda h: h.patch.read_bytes().replace(b"a/src/tinypkg/core.py", b"a/../../etc/core.py"),
                     "a path outside the checkout"),
    "binary": (lambda h: b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 40, "not a text diff"),
    "empty": (lambda h: b"", "contains no diff"),
    "not a diff": (lambda h: b"Please apply the TPU changes by hand.\n", "contains no diff"),
    "reversed": (lambda h: _reverse(h.patch.read_bytes()), "does not apply"),
}


def _reverse(diff: bytes) -> bytes:
    """The same diff with added and removed lines swapped (what `interdiff`/`-R` would give)."""
    out = []
    for line in diff.split(b"\n"):
        if line.startswith(b"+") and not line.startswith(b"+++"):
            line = b"-" + line[1:]
        elif line.startswith(b"-") and not line.startswith(b"---"):
            line = b"+" + line[1:]
        elif line.startswith(b"@@"):
            head, _, tail = line[3:].partition(b" @@")
            old, new = head.split(b" ")
            line = b"@@ -" + new[1:] + b" +" + old[1:] + b" @@" + tail
        elif line.startswith(b"index "):
            ids = line[6:].split(b" ")[0].split(b"..")
            line = b"index " + ids[1] + b".." + ids[0] + line[6 + len(line[6:].split(b" ")[0]):]
        out.append(line)
    return b"\n".join(out)


@pytest.mark.parametrize("name", list(PATCHES))
def test_bad_patch(installed, case, name):
    make, expected = PATCHES[name]
    data = make(installed)
    installed.patch.write_bytes(data)
    code, text = case("install")
    assert code in (1, 2) and expected in text and PATCH in text, text


def test_patch_header_only_change_is_recorded_and_nothing_else(installed, case):
    """The checkout is exactly what the edited file produces: install records the new file (state and
    the applied copy), the target and the checkout's files stay as they are; the next run does nothing."""
    text = installed.patch.read_text()
    checkout = installed.project.home / "src" / "tinypkg"
    tree = git(checkout, "diff")
    for edited in (text.replace("Description: test patch", "Description: tinypkg on a TPU card"), text):
        installed.patch.write_text(edited)
        code, out = case("install", changes_ok=True)
        assert code == 0 and f"recorded {PATCH} (the patch file changed since it was applied; the checkout is " \
            "already what it produces)" in out, out
        assert git(checkout, "diff") == tree
        code, out = case("install")
        assert code == 0 and "up to date" in out, out


# --- lock files --------------------------------------------------------------------------------------------

LOCK_SECTION = ('[lock]\nrequirements = "requirements.in"\nexclude_newer = "2023-08-31T00:00:00Z"\n'
                '[lock.files]\npypi = "test.lock.txt"\n[torch]')


def _with_lock(home: Home, text: str) -> None:
    (home.project.root / "manifests" / "test.lock.txt").write_text(text)
    _manifest(home, lambda t: t.replace("[torch]", LOCK_SECTION, 1))


LOCKS = {
    "hash mismatch": (lambda h: f"tinydep==1.0 \\\n    --hash=sha256:{'0' * 64}\n", "tinydep"),
    "missing hash": (lambda h: "tinydep==1.0\n", "no sha256 for tinydep"),
    "duplicate pin": (lambda h: lock_text(next(h.wheels.glob("tinydep-*.whl")), "tinydep", "1.0") * 2,
                      "tinydep is pinned twice"),
}


@pytest.mark.parametrize("name", list(LOCKS))
def test_bad_lock(installed, case, name):
    make, expected = LOCKS[name]
    _with_lock(installed, make(installed))
    code, text = case("install", "--no-uv")
    assert code in (1, 2) and expected in text, text
    assert ("hash" in text.lower()) if name == "hash mismatch" else ("test.lock.txt" in text), text


# --- wheels ------------------------------------------------------------------------------------------------

def _sophgo(folder: Path, tag: str = "cp39-cp39-linux_x86_64", metadata: str = "") -> Path:
    return make_wheel(folder, "torch_tpu", "2.1.0", tag=tag, metadata=metadata or "Requires-Python: >=3.8\n")


WHEELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated": (lambda d: _truncate(_sophgo(d)), "truncated or not a zip"),
    "not a zip": (lambda d: _write(d / WHEEL, b"<html>404 Not Found</html>\n"), "truncated or not a zip"),
    "Google's torch-tpu": (lambda d: _sophgo(d, metadata="Home-page: https://github.com/google/torch-tpu\n"
                                               "Requires-Python: >=3.11\n"), "Google's torch-tpu"),
    "wrong Python tag": (lambda d: _sophgo(d, tag="cp311-cp311-linux_x86_64"),
                         "is built for cp311, the stack is Python 3."),
}


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:200])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", list(WHEELS))
def test_bad_wheel(installed, case, tmp_path, name):
    make, expected = WHEELS[name]
    wheel = make(tmp_path / "w")
    _manifest(installed, lambda t: t.replace("[torch]", f'[torch_tpu]\nwheel = "{wheel}"\n[torch]', 1))
    code, text = case("install")
    assert code == 2 and expected in text and wheel.name in text, text


# --- state files -------------------------------------------------------------------------------------------

STATES = {
    "corrupt": (lambda s: b"{\x00\x13 not json", "is corrupt or truncated", "move"),
    "truncated": (lambda s: s[: len(s) // 2], "is corrupt or truncated", "move"),
    "future version": (lambda s: s.replace(b'"version": 1', b'"version": 7'), "newer sd-env", "upgrade sd-env"),
    "empty": (lambda s: b"", "is empty", "move"),
}


@pytest.mark.parametrize("name", list(STATES))
@pytest.mark.parametrize("command", ["install", "status"])
def test_bad_state(installed, case, name, command):
    make, expected, fix = STATES[name]
    state = installed.project.home / "state.json"
    state.write_bytes(make(state.read_bytes()))
    code, text = case(command)
    assert code == 2 and expected in text and str(state) in text and f"hint: {fix}" in text, text


SESSION = {"component": "tinypkg", "from_tag": "v1.0", "from_version": "1.0", "to_tag": "v1.1",
           "to_version": "1.1", "to_commit": "0" * 40, "source": "git", "work": "/nonexistent", "base": "0" * 40,
           "patch_files": [], "done": []}


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"version": 1, "component": "tinyp', "repatch session is corrupt or truncated"),
    (json.dumps({"version": 3, **SESSION}).encode(), "written by a newer sd-env"),
    (json.dumps({"version": 1, "colour": "blue", **SESSION}).encode(), "repatch session is corrupt"),
], ids=["truncated session", "future session", "unknown session field"])
def test_bad_session(installed, case, content, expected):
    session = installed.project.home / "repatch" / "session.json"
    session.parent.mkdir(exist_ok=True)
    session.write_bytes(content)
    try:
        for args in (["repatch", "--continue"], ["repatch", "--abort"], ["repatch"]):
            code, text = case(*args)
            assert code == 2 and expected in text and str(session) in text, text
    finally:
        shutil.rmtree(session.parent)


# --- the machine ---------------------------------------------------------------------------------------------

def test_probe_output_not_utf8(installed, case, tmp_path):
    """A target whose every run writes GBK to stderr (a Chinese locale, a vendor driver's banner)."""
    wrapper = tmp_path / "bin" / "python"
    wrapper.parent.mkdir()
    wrapper.write_text(f"#!/bin/sh\nprintf '\\276\\257\\270\\346: \\307\\375\\266\\257\\n' >&2\n"
                       f'exec "{installed.python}" "$@"\n')
    wrapper.chmod(0o755)
    code, text = case("status", python=wrapper)
    assert code == 0 and "tinypkg" in text, text


@pytest.fixture
def mount(tmp_path):
    """A small tmpfs at tmp_path/mnt (root only); unmounted afterwards."""
    where = tmp_path / "mnt"
    where.mkdir()
    mounted = []

    def do(options: str) -> Path:
        got = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             text=True)
        if got.returncode != 0:
            pytest.skip(f"skipped: cannot mount a tmpfs here ({got.stderr.strip()})")
        mounted.append(where)
        return where

    yield do
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


def test_full_disk(installed, case, mount):
    home = mount("size=2m") / "home"
    home.mkdir()
    filler = home.parent / "filler"
    with open(filler, "wb") as out:  # fill the disk to the last block
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    before = tree_hash(home)
    code, text = case("install", home=home)
    assert code != 0 and ("No space left on device" in text or "full disk" in text), text
    after = {k: v for k, v in tree_hash(home).items() if "/logs" not in k and not k.endswith("sd-env.lock")}
    assert after == {k: v for k, v in before.items()}
    assert not (home / "src").exists() and not (home / "tmp").exists()


def test_read_only_home(installed, case, mount):
    home = mount("ro,size=1m")
    code, text = case("install", home=home)
    assert code == 2 and f"the sd-env home {home} is on a read-only file system" in text and "--home" in text, text


def test_target_not_python_39(installed, case):
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() if shutil.which(
        "pyenv") else ""
    found = sorted(Path(root, "versions").glob("3.10*/bin/python")) if root else []
    if not found:
        pytest.skip("skipped: no pyenv Python 3.10 on this machine")
    code, text = case("install", python=found[0])
    assert code == 2 and "is Python 3.10" in text and f"the manifest wants {sys.version_info[0]}." in text, text


def test_corpus_size():
    cases = (len(MANIFESTS) + 1 + len(PATCHES) + 1 + len(LOCKS) + len(WHEELS) + 2 * len(STATES) + 3 + 4)
    assert cases >= 25
    print(f"bad-input corpus: {cases} cases")
