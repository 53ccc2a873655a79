"""sd-env repatch on a tiny upstream with a sequence of releases, real git and a real venv.

tinypkg v1.0 is installed with tinypkg-1.0-tpu.diff (the TPU patch of conftest), then
upstream releases, each built for one porting outcome:

  v1.1  an unrelated change elsewhere            -> exact
  v1.2  lines inserted above the hunk            -> offset
  v1.3  context lines of the hunk changed        -> 3-way (git apply alone fails)
  v1.4  the patched lines changed differently    -> conflict
  v1.5  upstream merged the change itself        -> obsolete (already upstream)
  v1.6  only the outermost context line changed  -> fuzz (with a patch whose pre-image blob is unknown)
  v1.7  the patched file is gone                 -> obsolete (target gone)
"""

from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from sd_env.core import manifest, manifest_edit, state
from sd_env.patching import patches, port
from sd_env.system import fsutil
from sd_env.target import installed as target
from tests.conftest import CORE, SETUP, TPU_PATCH, git, run_in, tiny_component

SCALER = "from tinypkg.core import device_kind, scaler_for; print(scaler_for(device_kind('tpu:0')))"
VERSION = "import tinypkg; print(tinypkg.__version__)"
OLD = "tinypkg-1.0-tpu.diff"
HEADER = ("Description: tinypkg on TPU\nAuthor: sd-env tests\nLast-Update: 2023-01-01\n"
          "Upstream-Version: tinypkg v1.0\n\n")
CORE_PY = "src/tinypkg/core.py"

PATCHED = TPU_PATCH[CORE_PY]


def add_device(text: str, after: tuple[str, str], device: str, scaler: str) -> str:
    """`text` (a core.py) with one more device kind and its scaler, right after `after`'s two lines."""
    kind_line, scaler_line = (f'        return "{a}"\n' for a in after)
    return text.replace(kind_line, kind_line + f'    if name.startswith("{device}"):\n        return "{device}"\n') \
        .replace(scaler_line, scaler_line + f'    if kind == "{device}":\n        return "{scaler}"\n')


XPU = add_device(CORE, ("gpu", "cuda.GradScaler"), "xpu", "xpu.GradScaler")
# v1.4's file with the TPU change added by hand: what a user writes to resolve the conflict.
XPU_AND_TPU = add_device(XPU, ("xpu", "xpu.GradScaler"), "tpu", "torch_tpu.GradScaler")

RELEASES: dict[str, dict[str, str | None]] = {
    "1.1": {CORE_PY: CORE, "README.md": "tinypkg: a tiny package\n"},
    "1.2": {CORE_PY: CORE.replace('"""\n', '"""\n\nimport os\n\nDEFAULT = os.environ.get("TINY", "cpu")\n', 1)},
    "1.3": {CORE_PY: CORE.replace("def device_kind(name):", "def device_kind(name: str):")
            .replace("def scaler_for(kind):", "def scaler_for(kind: str):")},
    "1.4": {CORE_PY: XPU},
    "1.5": {CORE_PY: PATCHED},
    "1.6": {CORE_PY: CORE.replace("def device_kind(name):", "def device_kind(name, strict=False):")},
    "1.7": {CORE_PY: None, "src/tinypkg/devices.py": CORE},
}


def release_all(upstream) -> None:
    """Tag v1.1 ... v1.7 after v1.0, each with its own version in setup.py and __init__.py."""
    for version, files in RELEASES.items():
        upstream.write("setup.py", SETUP.replace('version="1.0"', f'version="{version}"'))
        upstream.write("src/tinypkg/__init__.py", f'__version__ = "{version}"\n')
        for rel, text in files.items():
            if text is None:
                (upstream.repo / rel).unlink()
            else:
                upstream.write(rel, text)
        upstream.release(f"v{version}", f"tinypkg {version}")


def install_tiny(project, upstream, python, patch_text: str | None = None):
    """tinypkg v1.0 with the TPU patch, installed editable into `python`; then the later releases."""
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.add_patch(OLD, patch_text or upstream.diff(TPU_PATCH, header=HEADER))
    project.write_manifest([tiny_component(upstream, commit, [OLD])])
    release_all(upstream)
    assert project.cli("install", python=python) == 0
    assert run_in(python, SCALER) == "torch_tpu.GradScaler"
    return project


@pytest.fixture
def installed(project, upstream, fresh_target):
    return install_tiny(project, upstream, fresh_target)


def checkout(project) -> Path:
    return project.home / "src" / "tinypkg"


def work_tree(project, version: str) -> Path:
    return project.home / "repatch" / f"tinypkg-{version}"


def session_file(project) -> Path:
    return project.home / "repatch" / "session.json"


def run_repatch(project, python, capsys, *args: str) -> tuple[int, dict, str]:
    """`sd-env repatch --json ARGS`: exit code, the JSON report, stderr."""
    capsys.readouterr()
    code = project.cli("repatch", "--json", *args, python=python)
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def rows(doc: dict, step: str) -> list[dict]:
    return [r for r in doc["results"] if r["step"] == step]


def snapshot(project, python) -> dict:
    """Everything a failed or aborted repatch must leave exactly as it was."""
    co = checkout(project)
    return {
        "manifest": project.manifest.read_bytes(),
        "state": (project.home / "state.json").read_bytes(),
        "patches": sorted(p.name for p in (project.root / "patches").iterdir()),
        "head": git(co, "rev-parse", "HEAD"),
        "git status": git(co, "status", "--porcelain"),
        "git diff": git(co, "diff"),
        "behaviour": run_in(python, SCALER),
        "version": run_in(python, VERSION),
        "imported from": run_in(python, "import tinypkg; print(tinypkg.__file__)"),
    }


def status_row(project, python, capsys) -> dict:
    capsys.readouterr()
    assert project.cli("status", "--json", python=python) == 0
    return json.loads(capsys.readouterr().out)["components"][0]


def tag_commit(upstream, version: str) -> str:
    return git(upstream.repo, "rev-parse", f"v{version}^{{commit}}")


def assert_ported(project, upstream, python, capsys, tmp_path, version: str) -> Path:
    """A finished repatch to `version`: refreshed patch, manifest, checkout, install, no leftovers."""
    new = project.root / "patches" / f"tinypkg-{version}-tpu.diff"
    assert (project.root / "patches" / OLD).exists(), "the old patch is kept"
    assert new.exists()
    commit = tag_commit(upstream, version)
    refreshed = patches.load(new)
    assert refreshed.header["Description"] == "tinypkg on TPU"
    assert refreshed.header["Author"] == "sd-env tests"
    assert refreshed.header["Last-Update"] == datetime.date.today().isoformat()
    assert refreshed.header["Upstream-Version"] == f"tinypkg v{version} ({commit})"
    assert refreshed.header["Ported-From"].startswith(OLD)
    # It applies to the new tag as it is: no offsets, no merge.
    clone = tmp_path / f"check-{version}"
    git(tmp_path, "clone", "-q", "--branch", f"v{version}", upstream.url, str(clone))
    trial = subprocess.run(["git", "-C", str(clone), "apply", "--check", "-v", str(new)],
                           capture_output=True, text=True)
    assert trial.returncode == 0 and "offset" not in trial.stderr, trial.stderr

    comp = manifest.load(project.manifest).component("tinypkg")
    assert (comp.tag, comp.version, comp.commit) == (f"v{version}", version, commit)
    assert [p.name for p in comp.patches] == [new.name]
    rec = state.load(project.home / "state.json").components["tinypkg"]
    assert (rec.tag, rec.version, rec.commit) == (f"v{version}", version, commit)
    assert [p.name for p in rec.patches] == [new.name]

    row = status_row(project, python, capsys)
    assert row["head"] == commit
    assert row["patches"] == {new.name: "applied"}
    assert row["install"] == f"{version} editable -> managed checkout"
    assert row["needs"] == []
    assert run_in(python, SCALER) == "torch_tpu.GradScaler"
    assert run_in(python, VERSION) == version

    assert not session_file(project).exists()
    assert not (project.home / "repatch" / "old-tinypkg").exists()
    assert not work_tree(project, version).exists()
    return new


# --- upgrades that port ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "method", "evidence"), [
    ("1.1", "exact", "applies as it is"),
    ("1.2", "offset", "applies with offsets: hunk #1 at line"),
    ("1.3", "3-way", "3-way merge from the recorded pre-image"),
])
def test_port_to_release(installed, upstream, fresh_target, capsys, tmp_path, version, method, evidence):
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", f"tinypkg=={version}")
    assert code == 0, err
    ported = rows(doc, "port")
    assert len(ported) == 1
    assert ported[0]["status"] == "ok"
    assert ported[0]["detail"].startswith(f"{OLD}: {method} (")
    assert evidence in ported[0]["detail"]
    assert rows(doc, "finish")[0]["status"] == "ok"
    new = assert_ported(installed, upstream, fresh_target, capsys, tmp_path, version)
    assert patches.load(new).header["Ported-From"] == f"{OLD} ({method}, by sd-env repatch)"
    if version == "1.3":
        # the merged file keeps upstream's change as well as the patch's
        text = (checkout(installed) / CORE_PY).read_text()
        assert "def scaler_for(kind: str):" in text and '    if kind == "tpu":' in text


def test_3way_case_does_not_apply_without_a_merge(installed, upstream, tmp_path):
    """The premise of v1.3: `git apply` alone fails there, so the port above was a real 3-way merge."""
    clone = tmp_path / "v13"
    git(tmp_path, "clone", "-q", "--branch", "v1.3", upstream.url, str(clone))
    got = subprocess.run(["git", "-C", str(clone), "apply", "--check", str(installed.root / "patches" / OLD)],
                         capture_output=True, text=True)
    assert got.returncode != 0 and "patch failed" in got.stderr


@pytest.mark.parametrize(("version", "evidence"), [
    ("1.5", "already upstream: the new release contains the change (the patch reverse-applies cleanly)"),
    ("1.7", f"target construct gone upstream: {CORE_PY} no longer exist(s)"),
])
def test_obsolete_upstream_drops_the_patch(installed, upstream, fresh_target, capsys, version, evidence):
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", f"tinypkg=={version}")
    assert code == 0, err
    ported = rows(doc, "port")
    assert ported[0]["status"] == "warn"
    assert ported[0]["detail"].startswith(f"{OLD}: obsolete ({evidence}")
    assert "no patches left (all obsolete upstream)" in rows(doc, "finish")[0]["detail"]
    assert not (installed.root / "patches" / f"tinypkg-{version}-tpu.diff").exists()
    assert (installed.root / "patches" / OLD).exists()
    comp = manifest.load(installed.manifest).component("tinypkg")
    assert (comp.tag, comp.version, comp.commit) == (f"v{version}", version, tag_commit(upstream, version))
    assert comp.patches == ()
    row = status_row(installed, fresh_target, capsys)
    assert row["patches"] == {} and row["needs"] == []
    assert row["install"] == f"{version} editable -> managed checkout"
    assert git(checkout(installed), "status", "--porcelain") == ""
    assert run_in(fresh_target, VERSION) == version
    if version == "1.5":
        assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"  # upstream's own TPU support
    assert not session_file(installed).exists()


# --- conflicts: the installed environment never changes ---------------------------------------------------------


def test_conflict_leaves_everything_as_it_was(installed, fresh_target, capsys):
    before = snapshot(installed, fresh_target)
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.4")
    assert code == 1
    assert f"{OLD} does not port to tinypkg v1.4" in err
    assert "3-way merge left conflict markers in src/tinypkg/core.py" in err
    assert f"{CORE_PY}: hunk #1 (old line 4), nearest match at line" in err
    assert "sd-env repatch --continue" in err and "sd-env repatch --abort" in err
    assert rows(doc, "port")[0]["status"] == "fail"
    text = (work_tree(installed, "1.4") / CORE_PY).read_text()
    assert "<<<<<<< " in text and "=======" in text and ">>>>>>> " in text
    assert json.loads(session_file(installed).read_text())["phase"] == "porting"
    assert snapshot(installed, fresh_target) == before
    assert not (installed.root / "patches" / "tinypkg-1.4-tpu.diff").exists()
    # Another upgrade cannot start over the one in progress.
    code, _doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.1")
    assert code == 2 and "already in progress" in err


def test_continue_after_a_scripted_fix(installed, upstream, fresh_target, capsys, tmp_path):
    assert run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.4")[0] == 1
    (work_tree(installed, "1.4") / CORE_PY).write_text(XPU_AND_TPU)  # the user resolves the markers
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--continue")
    assert code == 0, err
    assert rows(doc, "port")[0]["detail"] == f"{OLD}: manual (resolved by hand in the work tree)"
    new = assert_ported(installed, upstream, fresh_target, capsys, tmp_path, "1.4")
    assert patches.load(new).header["Ported-From"] == f"{OLD} (manual, by sd-env repatch)"
    assert run_in(fresh_target, "from tinypkg.core import device_kind; print(device_kind('xpu:1'))") == "xpu"


def test_continue_with_markers_left_fails(installed, upstream, fresh_target, capsys, tmp_path):
    before = snapshot(installed, fresh_target)
    assert run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.4")[0] == 1
    code, _doc, err = run_repatch(installed, fresh_target, capsys, "--continue")
    assert code == 1
    assert f"{OLD}: {CORE_PY}: conflict markers left" in err
    assert session_file(installed).exists()
    assert snapshot(installed, fresh_target) == before
    # A fix that drops an added line is refused too, unless accepted.
    (work_tree(installed, "1.4") / CORE_PY).write_text(XPU_AND_TPU.replace('        return "tpu"\n',
                                                                           '        return "xla"\n'))
    code, _doc, err = run_repatch(installed, fresh_target, capsys, "--continue")
    assert code == 1
    assert "1 added line(s) missing" in err and "--continue --accept" in err
    assert snapshot(installed, fresh_target) == before
    (work_tree(installed, "1.4") / CORE_PY).write_text(XPU_AND_TPU)
    assert run_repatch(installed, fresh_target, capsys, "--continue")[0] == 0
    assert_ported(installed, upstream, fresh_target, capsys, tmp_path, "1.4")


def test_abort_removes_the_work_tree_and_changes_nothing(installed, fresh_target, capsys):
    before = snapshot(installed, fresh_target)
    assert run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.4")[0] == 1
    assert work_tree(installed, "1.4").exists()
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--abort")
    assert code == 0, err
    assert rows(doc, "abort")[0]["status"] == "ok"
    assert not work_tree(installed, "1.4").exists()
    assert not session_file(installed).exists()
    assert snapshot(installed, fresh_target) == before
    capsys.readouterr()
    assert installed.cli("repatch", "--abort", python=fresh_target) == 2
    assert "no repatch in progress" in capsys.readouterr().err


# --- fuzz is opt-in and needs --accept --------------------------------------------------------------------------


def unknown_preimage(upstream) -> str:
    """The TPU patch with an index line naming a pre-image blob nobody has: no 3-way merge is possible."""
    text = upstream.diff(TPU_PATCH, header=HEADER)
    blob = git(upstream.repo, "rev-parse", f"HEAD:{CORE_PY}")
    assert f"index {blob}.." in text
    return text.replace(f"index {blob}..", "index " + "1" * 40 + "..")


def test_fuzz_is_opt_in_and_needs_accept(project, upstream, fresh_target, capsys, tmp_path):
    install_tiny(project, upstream, fresh_target, unknown_preimage(upstream))
    before = snapshot(project, fresh_target)
    code, _doc, err = run_repatch(project, fresh_target, capsys, "--to", "tinypkg==1.6")
    assert code == 1
    assert "no 3-way merge possible: pre-image blob(s) 111111111111 unavailable" in err
    assert (work_tree(project, "1.6") / (CORE_PY + ".rej")).exists()
    assert run_repatch(project, fresh_target, capsys, "--abort")[0] == 0

    code, _doc, err = run_repatch(project, fresh_target, capsys, "--to", "tinypkg==1.6", "--fuzz", "2")
    assert code == 1
    assert "applied with fuzz 2" in err and "--accept" in err
    assert snapshot(project, fresh_target) == before
    assert run_repatch(project, fresh_target, capsys, "--abort")[0] == 0

    code, doc, err = run_repatch(project, fresh_target, capsys, "--to", "tinypkg==1.6", "--fuzz", "2", "--accept")
    assert code == 0, err
    ported = rows(doc, "port")[0]
    assert ported["status"] == "warn" and ported["detail"].startswith(f"{OLD}: fuzzed (applied with fuzz 2")
    new = assert_ported(project, upstream, fresh_target, capsys, tmp_path, "1.6")
    assert patches.load(new).header["Ported-From"] == f"{OLD} (fuzzed, by sd-env repatch)"


def test_fuzzed_port_is_not_accepted_by_a_plain_continue(project, upstream, fresh_target, capsys, tmp_path):
    install_tiny(project, upstream, fresh_target, unknown_preimage(upstream))
    before = snapshot(project, fresh_target)
    assert run_repatch(project, fresh_target, capsys, "--to", "tinypkg==1.6", "--fuzz", "2")[0] == 1
    code, _doc, err = run_repatch(project, fresh_target, capsys, "--continue")
    assert code == 1 and "--accept" in err
    assert snapshot(project, fresh_target) == before
    code, doc, err = run_repatch(project, fresh_target, capsys, "--continue", "--accept")
    assert code == 0, err
    assert rows(doc, "port")[0]["detail"].startswith(f"{OLD}: fuzzed (")
    new = assert_ported(project, upstream, fresh_target, capsys, tmp_path, "1.6")
    assert patches.load(new).header["Ported-From"] == f"{OLD} (fuzzed, by sd-env repatch)"


# --- clobbered: something replaced the patched, editable install --------------------------------------------------


def test_clobbered_checkout_is_restored(installed, fresh_target, capsys):
    git(checkout(installed), "checkout", ".")  # someone threw the patch away
    assert run_in(fresh_target, SCALER) == "None"
    code, doc, err = run_repatch(installed, fresh_target, capsys)
    assert code == 0, err
    found = rows(doc, "found")
    assert found[0]["status"] == "warn"
    assert f"{OLD}: not applied" in found[0]["detail"]
    assert rows(doc, "patch")[0]["status"] == "ok"
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
    row = status_row(installed, fresh_target, capsys)
    assert row["patches"] == {OLD: "applied"} and row["needs"] == []
    # A second run finds nothing to do.
    code, doc, _err = run_repatch(installed, fresh_target, capsys)
    assert code == 0
    assert [(r["step"], r["status"], r["detail"]) for r in rows(doc, "found")] == [("found", "ok", "as pinned")]


def test_clobbered_install_is_restored(installed, upstream, fresh_target, capsys, tmp_path):
    # `pip install` of another release, not editable, replaces the managed one.
    export = tmp_path / "tinypkg-1.1"
    archive = subprocess.run(["git", "-C", str(upstream.repo), "archive", "--format=tar", "v1.1"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(export)
    git(checkout(installed), "checkout", ".")
    subprocess.run([str(fresh_target), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", str(export)], check=True, capture_output=True)
    assert run_in(fresh_target, VERSION) == "1.1"
    code, doc, err = run_repatch(installed, fresh_target, capsys)
    assert code == 0, err
    found = rows(doc, "found")[0]
    assert found["status"] == "warn"
    assert f"{OLD}: not applied" in found["detail"]
    assert "install: 1.1 installed normally (not the managed checkout)" in found["detail"]
    assert [r["step"] for r in doc["results"] if r["component"] == "tinypkg"] == ["found", "patch", "build"]
    assert run_in(fresh_target, VERSION) == "1.0"
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
    row = status_row(installed, fresh_target, capsys)
    assert row["install"] == "1.0 editable -> managed checkout" and row["needs"] == []


# --- interrupted repatches ------------------------------------------------------------------------------------


def test_interrupted_port_is_aborted_and_redone(installed, upstream, fresh_target, capsys, tmp_path,
                                                monkeypatch):
    before = snapshot(installed, fresh_target)

    def killed(runner, repo, patch, **kw):  # half the change written, then the process dies
        (repo / CORE_PY).write_text(PATCHED.split("def scaler_for")[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(port, "port", killed)
    assert installed.cli("repatch", "--to", "tinypkg==1.3", python=fresh_target) == 130
    monkeypatch.undo()
    assert json.loads(session_file(installed).read_text())["phase"] == "porting"
    assert snapshot(installed, fresh_target) == before  # the installed environment was never touched
    code, _doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.3")
    assert code == 2 and "already in progress" in err and "--abort" in err
    code, _doc, err = run_repatch(installed, fresh_target, capsys)
    assert code == 2 and "in progress" in err
    assert run_repatch(installed, fresh_target, capsys, "--abort")[0] == 0
    assert snapshot(installed, fresh_target) == before
    code, _doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.3")
    assert code == 0, err
    assert_ported(installed, upstream, fresh_target, capsys, tmp_path, "1.3")


def _kill_after(monkeypatch, module, name, when=lambda *a, **kw: True):
    """Make module.name do its work, then raise KeyboardInterrupt (once) when `when(args)` holds."""
    real = getattr(module, name)
    fired = []

    def wrapper(*args, **kw):
        result = real(*args, **kw)
        if not fired and when(*args, **kw):
            fired.append(True)
            raise KeyboardInterrupt
        return result

    monkeypatch.setattr(module, name, wrapper)
    return fired


def _kill_before(monkeypatch, module, name):
    real = getattr(module, name)
    fired = []

    def wrapper(*args, **kw):
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(module, name, wrapper)
    return fired


KILL_POINTS = {
    "after the refreshed patch is written": lambda mp: _kill_after(
        mp, os, "replace", lambda src, dst: Path(dst).name == "tinypkg-1.3-tpu.diff"),
    "after the manifest update": lambda mp: _kill_after(
        mp, fsutil, "write_atomic", lambda path, data: path.suffix == ".toml"),
    "between the checkout moves": lambda mp: _kill_after(
        mp, os, "replace", lambda src, dst: Path(dst).name == "old-tinypkg"),
    "after the checkout swap": lambda mp: _kill_after(
        mp, os, "replace", lambda src, dst: Path(src).name == "tinypkg-1.3"),
    "before the editable rebuild": lambda mp: _kill_before(mp, target, "install_editable"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_interrupted_finish_is_resumed(installed, upstream, fresh_target, capsys, tmp_path, monkeypatch, point):
    fired = KILL_POINTS[point](monkeypatch)
    assert installed.cli("repatch", "--to", "tinypkg==1.3", python=fresh_target) == 130
    assert fired, f"the kill point {point!r} was never reached"
    monkeypatch.undo()
    assert json.loads(session_file(installed).read_text())["phase"] == "finishing"
    # --abort cannot undo a finish under way: it would lose the checkout or the manifest's old state.
    capsys.readouterr()
    assert installed.cli("repatch", "--abort", python=fresh_target) == 2
    assert "cannot be aborted" in capsys.readouterr().err
    assert session_file(installed).exists()
    # The same command without --to resumes and completes.
    code, doc, err = run_repatch(installed, fresh_target, capsys)
    assert code == 0, err
    assert rows(doc, "finish")[0]["status"] == "ok"
    assert_ported(installed, upstream, fresh_target, capsys, tmp_path, "1.3")
    assert not list((installed.root / "patches").glob("*.tmp"))
    assert not list(installed.manifest.parent.glob("*.tmp"))
    assert sorted(p.name for p in (installed.home / "repatch").iterdir()) == []


def test_manifest_edited_by_hand_is_an_upgrade(installed, upstream, fresh_target, capsys, tmp_path):
    """Editing the manifest's tag and version, then `sd-env repatch`, ports like --to."""
    text = installed.manifest.read_text()
    commit = git(upstream.repo, "rev-parse", "v1.0^{commit}")
    text = text.replace('tag = "v1.0"', 'tag = "v1.2"').replace('version = "1.0"', 'version = "1.2"')
    installed.manifest.write_text(text.replace(f'commit = "{commit}"\n', ""))
    code, doc, err = run_repatch(installed, fresh_target, capsys)
    assert code == 0, err
    assert rows(doc, "port")[0]["detail"].startswith(f"{OLD}: offset (")
    assert_ported(installed, upstream, fresh_target, capsys, tmp_path, "1.2")


def test_back_to_the_pinned_release_reuses_the_patch_file(installed, upstream, fresh_target, capsys):
    """--to another release, then --to the pinned one again: the original patch file is reused, no duplicate."""
    original = (installed.root / "patches" / OLD).read_bytes()
    assert run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.2")[0] == 0
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.0")
    assert code == 0, err
    assert sorted(p.name for p in (installed.root / "patches").iterdir()) == [OLD, "tinypkg-1.2-tpu.diff"]
    assert (installed.root / "patches" / OLD).read_bytes() == original  # reused as it is, header and all
    comp = manifest.load(installed.manifest).component("tinypkg")
    assert (comp.version, [p.name for p in comp.patches]) == ("1.0", [OLD])
    assert OLD in rows(doc, "finish")[0]["detail"]
    row = status_row(installed, fresh_target, capsys)
    assert row["patches"] == {OLD: "applied"} and row["needs"] == []
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler" and run_in(fresh_target, VERSION) == "1.0"


def test_manifest_with_one_patch_a_line_is_rewritten_keeping_comments(installed, fresh_target, capsys):
    text = installed.manifest.read_text().replace(f'patches = ["{OLD}"]',
                                                  f'# the TPU port\npatches = [\n  "{OLD}",  # keep\n]')
    installed.manifest.write_text("# my project\n" + text)
    code, _doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.2")
    assert code == 0, err
    text = installed.manifest.read_text()
    assert text.startswith("# my project\n") and "# the TPU port\npatches = [\n" in text
    assert '"tinypkg-1.2-tpu.diff",\n]' in text and 'version = "1.2"' in text


def test_a_manifest_that_cannot_be_edited_stops_before_finishing(installed, fresh_target, capsys, monkeypatch):
    """The manifest edit is checked while --abort still works: the user is never stuck."""
    before = snapshot(installed, fresh_target)
    # A component renamed by hand while the port ran: the edit cannot find it.
    real = manifest_edit.updated_text
    monkeypatch.setattr(manifest_edit, "updated_text", lambda path, name, **kw: real(path, "renamed", **kw))
    code, _doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.2")
    monkeypatch.undo()
    assert code == 2 and "no [[component]] named 'renamed'" in err, err
    assert json.loads(session_file(installed).read_text())["phase"] == "porting"
    assert not (installed.root / "patches" / "tinypkg-1.2-tpu.diff").exists()
    assert run_repatch(installed, fresh_target, capsys, "--abort")[0] == 0
    assert snapshot(installed, fresh_target) == before
