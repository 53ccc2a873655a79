"""install/status end to end on tiny upstream repos, real git and a real venv."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sd_env.core import manifest, state
from sd_env.errors import InputError
from sd_env.patching import patches, sources
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.workflows import install
from tests.conftest import CORE, TPU_PATCH, git, run_in, tiny_component

SCALER = "from tinypkg.core import device_kind, scaler_for; print(scaler_for(device_kind('tpu:0')))"


def setup_tiny(project, upstream, **kw):
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.add_patch("tiny-tpu.diff", upstream.diff(TPU_PATCH))
    project.write_manifest([tiny_component(upstream, commit, ["tiny-tpu.diff"], **kw)])
    return commit


def checkout(project) -> Path:
    return project.home / "src" / "tinypkg"


def test_install_fetches_patches_and_builds(project, upstream, fresh_target, capsys):
    commit = setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    assert git(checkout(project), "rev-parse", "HEAD") == commit
    # The editable install imports the patched checkout.
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
    where = run_in(fresh_target, "import tinypkg; print(tinypkg.__file__)")
    assert where.startswith(str(checkout(project)))
    rec = state.load(project.home / "state.json").components["tinypkg"]
    assert (rec.source, rec.commit) == ("git", commit)
    assert [p.name for p in rec.patches] == ["tiny-tpu.diff"]
    capsys.readouterr()
    assert project.cli("status", "--json", python=fresh_target) == 0
    doc = json.loads(capsys.readouterr().out)
    row = doc["components"][0]
    assert row["patches"] == {"tiny-tpu.diff": "applied"}
    assert row["install"] == "1.0 editable -> managed checkout"
    assert row["needs"] == []


def test_second_run_makes_no_fetch_and_no_pip_call(project, upstream, fresh_target):
    setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    runner = Runner()
    outcome = install.run(manifest.load(project.manifest), Paths(project.home), runner,
                          install.Options(fresh_target))
    assert outcome.error is None
    assert [(r.step, r.status) for r in outcome.results] == [("install", "ok"), ("wheel", "skipped")]
    assert "up to date" in outcome.results[0].detail
    assert runner.count("fetch") == 0 and runner.count("clone") == 0
    assert runner.count("pip") == 0
    assert runner.count("apply") == 1 and runner.count("--cached") == 1  # the computed check only


def test_already_applied_by_hand_is_left_alone(project, upstream, fresh_target):
    setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    state_file = project.home / "state.json"
    state_file.unlink()  # the record is gone; the tree still shows the applied series
    runner = Runner()
    outcome = install.run(manifest.load(project.manifest), Paths(project.home), runner,
                          install.Options(fresh_target))
    assert outcome.error is None
    assert runner.count("apply") == runner.count("--cached")  # nothing written to the tree
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"


def test_conflict_names_hunk_and_leaves_checkout_as_it_was(project, upstream, fresh_target, capsys):
    commit = git(upstream.repo, "rev-parse", "HEAD")
    # A patch written against a different upstream text: its context does not match.
    other = CORE.replace('return "cpu"', 'return "host"')
    upstream.write("src/tinypkg/core.py", other)
    git(upstream.repo, "commit", "-qam", "other")
    bad = upstream.diff({"src/tinypkg/core.py": other.replace('return "host"', 'return "tpu"')})
    git(upstream.repo, "reset", "-q", "--hard", commit)
    good = upstream.diff({"examples/train.py": "import tinypkg\nprint('tpu training')\n"})
    project.add_patch("good.diff", good)
    project.add_patch("bad.diff", bad)
    project.write_manifest([tiny_component(upstream, commit, ["good.diff", "bad.diff"])])
    assert project.cli("install", python=fresh_target) == 1
    err = capsys.readouterr().err
    assert "bad.diff does not apply" in err
    assert "src/tinypkg/core.py: hunk #1 at line" in err
    # all-or-nothing: good.diff was not written either
    assert git(checkout(project), "status", "--porcelain") == ""


def test_patch_touching_parent_path_is_refused(project, upstream, fresh_target, capsys):
    commit = git(upstream.repo, "rev-parse", "HEAD")
    evil = upstream.diff({"setup.py": "print('x')\n"}).replace("a/setup.py", "a/../evil.py").replace(
        "b/setup.py", "b/../evil.py")
    project.add_patch("evil.diff", evil)
    project.write_manifest([tiny_component(upstream, commit, ["evil.diff"])])
    assert project.cli("install", python=fresh_target) == 2
    err = capsys.readouterr().err
    assert "evil.diff" in err and "outside the checkout" in err
    assert not (project.root / "evil.py").exists()


def test_symlink_leaving_the_tree_is_refused(project, upstream, fresh_target, capsys, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.py").write_text("x = 1\n")
    subprocess.run(["ln", "-s", str(outside), str(upstream.repo / "linked")], check=True)
    commit = upstream.release("v1.0", "add link")
    project.add_patch("link.diff", "Description: through a link\n\n"
                      "diff --git a/linked/x.py b/linked/x.py\n--- a/linked/x.py\n+++ b/linked/x.py\n"
                      "@@ -1 +1 @@\n-x = 1\n+x = 2\n")
    project.write_manifest([tiny_component(upstream, commit, ["link.diff"])])
    assert project.cli("install", python=fresh_target) == 2
    assert "symlink" in capsys.readouterr().err
    assert (outside / "x.py").read_text() == "x = 1\n"


def test_moved_tag_is_an_error_and_leaves_nothing(project, upstream, fresh_target, capsys):
    old = setup_tiny(project, upstream)
    upstream.write("README", "moved\n")
    upstream.release("v1.0", "retag")  # the tag now points elsewhere
    assert project.cli("install", python=fresh_target) == 1
    err = capsys.readouterr().err
    assert "points to" in err and old in err
    assert not checkout(project).exists()
    assert not (project.home / "tmp").exists()  # the half-made clone was removed too


def test_mirror_rewrites_fetch_url_but_not_the_record(project, upstream, fresh_target, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "acme").mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(upstream.repo), str(mirror / "acme" / "tinypkg.git")],
                   check=True)
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.add_patch("tiny-tpu.diff", upstream.diff(TPU_PATCH))
    comp = tiny_component(upstream, commit, ["tiny-tpu.diff"])
    comp["git"] = "https://github.com/acme/tinypkg.git"
    project.write_manifest([comp])
    assert project.cli("install", "--git-mirror", str(mirror), python=fresh_target) == 0
    assert git(checkout(project), "rev-parse", "HEAD") == commit
    assert git(checkout(project), "remote", "get-url", "origin") == "https://github.com/acme/tinypkg.git"
    assert git(checkout(project), "rev-parse", "--is-shallow-repository") == "true"


def test_local_edits_are_refused_and_kept(project, upstream, fresh_target, capsys):
    setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    edited = checkout(project) / "src" / "tinypkg" / "__init__.py"
    edited.write_text('__version__ = "1.0"\nMINE = True\n')
    capsys.readouterr()
    assert project.cli("install", python=fresh_target) == 1
    err = capsys.readouterr().err
    assert "local edits in src/tinypkg/__init__.py" in err
    assert "MINE = True" in edited.read_text()


def test_interrupted_half_applied_series_is_restored_and_reapplied(project, upstream, fresh_target):
    commit = git(upstream.repo, "rev-parse", "HEAD")
    two_files = dict(TPU_PATCH)
    two_files["examples/train.py"] = "import tinypkg\nimport torch_tpu\nprint('training')\n"
    project.add_patch("two.diff", upstream.diff(two_files))
    project.write_manifest([tiny_component(upstream, commit, ["two.diff"])])
    assert project.cli("install", python=fresh_target) == 0
    # Simulate a run killed mid-write: one file patched, the other still pristine.
    git(checkout(project), "checkout", "HEAD", "--", "examples/train.py")
    assert project.cli("install", python=fresh_target) == 0
    assert "torch_tpu" in (checkout(project) / "examples/train.py").read_text()
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"


def test_changed_patch_file_replaces_the_old_series(project, upstream, fresh_target):
    setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    new = {k: v.replace("torch_tpu.GradScaler", "torch_tpu.tpu.amp.GradScaler") for k, v in TPU_PATCH.items()}
    project.add_patch("tiny-tpu.diff", upstream.diff(new))
    assert project.cli("install", python=fresh_target) == 0
    assert run_in(fresh_target, SCALER) == "torch_tpu.tpu.amp.GradScaler"


def test_commit_is_recorded_on_first_clone(project, upstream, fresh_target, capsys):
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.write_manifest([tiny_component(upstream, None)])
    assert project.cli("install", python=fresh_target) == 0
    assert f"recorded tinypkg v1.0 -> {commit}" in capsys.readouterr().err
    rec = state.load(project.home / "state.json").components["tinypkg"]
    assert rec.recorded_commit and rec.commit == commit
    # The recorded commit now pins: a moved tag is noticed on the next fresh clone.
    shutil.rmtree(checkout(project))
    upstream.release("v1.0", "retag")
    assert project.cli("install", python=fresh_target) == 1


def make_sdist(upstream, dest: Path) -> Path:
    """tinypkg-1.0.tar.gz as PyPI would serve it: no examples/, a PKG-INFO, an egg-info."""
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "tinypkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for rel in ("setup.py", "src/tinypkg/__init__.py", "src/tinypkg/core.py"):
            tar.add(upstream.repo / rel, f"tinypkg-1.0/{rel}")
        pkg_info = dest / "PKG-INFO"
        pkg_info.write_text("Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        tar.add(pkg_info, "tinypkg-1.0/PKG-INFO")
        tar.add(pkg_info, "tinypkg-1.0/src/tinypkg.egg-info/PKG-INFO")
    return archive


def test_sdist_fallback_when_git_is_unreachable(project, upstream, fresh_target, tmp_path, monkeypatch,
                                                capsys):
    make_sdist(upstream, tmp_path / "index")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    commit = git(upstream.repo, "rev-parse", "HEAD")
    project.add_patch("tiny-tpu.diff", upstream.diff(TPU_PATCH))
    project.add_patch("example.diff", upstream.diff({"examples/train.py": "import torch_tpu\n"}))
    comp = tiny_component(upstream, commit, ["tiny-tpu.diff", "example.diff"])
    comp["git"] = (tmp_path / "gone" / "tinypkg.git").as_uri()  # git cannot reach it
    project.write_manifest([comp])
    assert project.cli("install", "--json", python=fresh_target) == 0
    out = capsys.readouterr()
    assert "falling back to the PyPI sdist tinypkg==1.0" in out.err
    doc = json.loads(out.out)
    by_step = {(r["step"], r["status"]): r["detail"] for r in doc["results"]}
    assert "PyPI sdist tinypkg-1.0.tar.gz" in by_step[("fetch", "ok")]
    assert "example.diff: not applicable" in by_step[("patch", "warn")]
    assert "applied tiny-tpu.diff" in by_step[("patch", "ok")]
    rec = state.load(project.home / "state.json").components["tinypkg"]
    assert rec.source == "sdist" and rec.sdist_sha256
    # sdist metadata is not imported: the tree equals the tag's, and only the editable install provides tinypkg
    imported = git(checkout(project), "ls-tree", "-r", "--name-only", "HEAD").split()
    assert "PKG-INFO" not in imported and not [p for p in imported if ".egg-info/" in p], imported
    assert "src/tinypkg/core.py" in imported
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
    capsys.readouterr()
    assert project.cli("status", "--json", python=fresh_target) == 0
    row = json.loads(capsys.readouterr().out)["components"][0]
    assert row["patches"]["example.diff"] == "not applicable to this source"
    assert row["patches"]["tiny-tpu.diff"] == "applied"
    assert row["pin_source"] == "sdist import"


def test_no_sdist_fallback_flag_fails_clearly(project, upstream, fresh_target, tmp_path, capsys):
    comp = tiny_component(upstream, None)
    comp["git"] = (tmp_path / "gone" / "tinypkg.git").as_uri()
    project.write_manifest([comp])
    assert project.cli("install", "--no-sdist-fallback", python=fresh_target) == 1
    err = capsys.readouterr().err
    assert "git cannot reach" in err and "--git-mirror" in err


def test_status_without_checkout_plans_everything(project, upstream, capsys):
    project.write_manifest([tiny_component(upstream, None)])
    assert project.cli("status", "--json") == 0
    row = json.loads(capsys.readouterr().out)["components"][0]
    assert row["needs"] == ["fetch", "patch", "build"]


@pytest.mark.parametrize("path", ["../evil.py", "/etc/evil.py", "src/../../evil.py"])
def test_patch_paths_outside_the_checkout_are_bad_input(tmp_path, path):
    bad = tmp_path / "bad.diff"
    bad.write_text(f"Description: x\n\ndiff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n"
                   "@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(InputError, match="outside the checkout") as info:
        patches.load(bad)
    assert info.value.exit_code == 2


def test_a_local_mirror_without_the_repository_is_not_asked(tmp_path):
    """A re-run with a mirror that lacks a component (ours has no transformers) fetches nothing."""
    (tmp_path / "owner" / "name.git").mkdir(parents=True)
    assert not sources.mirror_lacks("https://github.com/owner/name.git", str(tmp_path))
    assert sources.mirror_lacks("https://github.com/owner/other.git", str(tmp_path))
    assert not sources.mirror_lacks("https://github.com/owner/other.git", "https://mirror.example/git")
    assert not sources.mirror_lacks("https://example.org/other.git", str(tmp_path))  # not rewritten at all


def test_a_deleted_patched_file_is_reported_then_repaired_and_json_says_changed(project, upstream, fresh_target,
                                                                                capsys):
    """A missing file holds no edit of the user's: verify and status call the component
    clobbered, and the next install puts the patched file back (what a fleet's repair run does)."""
    setup_tiny(project, upstream)
    assert project.cli("install", "--json", python=fresh_target) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert project.cli("install", "--json", python=fresh_target) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    core = checkout(project) / "src" / "tinypkg" / "core.py"
    patched = core.read_text()
    core.unlink()
    project.cli("status", "--json", python=fresh_target)
    row = json.loads(capsys.readouterr().out)["components"][0]
    assert row["patches"] == {"tiny-tpu.diff": "half applied"} and row["needs"] == ["restore", "patch"]
    assert project.cli("install", "--json", python=fresh_target) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["changed"] is True
    assert [r["step"] for r in doc["results"] if r["component"] == "tinypkg"] == ["restore", "patch"]
    assert core.read_text() == patched
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"


def test_a_header_only_edit_of_a_patch_file_is_recorded_and_verify_passes(project, upstream, fresh_target, capsys):
    """Only `Last-Update:` changed: the checkout is exactly what the new file produces. verify says so
    without failing; install records the new file (nothing else runs); then status and verify say applied."""
    from sd_env.patching import status
    from sd_env.verify.context import Check, Context
    from sd_env.verify.environment import check_sources
    setup_tiny(project, upstream)
    assert project.cli("install", python=fresh_target) == 0
    patch = project.root / "patches" / "tiny-tpu.diff"
    patch.write_text("Last-Update: 2031-01-02\n" + patch.read_text())
    new_sha = patches.load(patch).sha256
    man, paths = manifest.load(project.manifest), Paths(project.home)

    def sources_check() -> Check:
        ctx = Context(man, paths, Runner(), fresh_target, quick=True)
        return check_sources(ctx, status.collect(man, paths, Runner(), fresh_target))

    before = sources_check()
    assert before.status == "warn" and "sd-env install` records it" in before.detail, before
    assert "repatch" not in before.detail
    tree = [git(checkout(project), *args) for args in (["rev-parse", "HEAD"], ["diff"])]
    runner = Runner()
    outcome = install.run(man, paths, runner, install.Options(fresh_target))
    assert outcome.error is None and outcome.changed
    recorded = [r for r in outcome.results if r.step == "patch"]
    assert [r.status for r in recorded] == ["ok"] and recorded[0].detail.startswith(
        "recorded tiny-tpu.diff (the patch file changed since it was applied; the checkout is already what it "
        "produces)"), recorded
    assert not any(r.step == "build" for r in outcome.results)
    assert [git(checkout(project), *args) for args in (["rev-parse", "HEAD"], ["diff"])] == tree, "the tree is kept"
    rec = state.load(project.home / "state.json").components["tinypkg"]
    assert [(p.name, p.sha256) for p in rec.patches] == [("tiny-tpu.diff", new_sha)]
    capsys.readouterr()
    assert project.cli("status", "--json", python=fresh_target) == 0
    assert json.loads(capsys.readouterr().out)["components"][0]["patches"] == {"tiny-tpu.diff": "applied"}
    after = sources_check()
    assert after.status == "ok", after
    again = install.run(man, paths, runner, install.Options(fresh_target))
    assert not again.changed and [r.step for r in again.results] == ["install", "wheel"]
