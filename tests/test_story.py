"""One story per failure: verify, status and the README give the same fix for the same case."""

from __future__ import annotations

import json

from tests.conftest import TPU_PATCH, git, tiny_component
from tests.workflows.test_install import checkout


def sources_row(project, python, capsys) -> str:
    capsys.readouterr()
    project.cli("verify", "--quick", "--json", python=python)
    return next(c for c in json.loads(capsys.readouterr().out)["checks"] if c["name"] == "sources+patches")["detail"]


def test_clobbered_says_repatch_and_local_edits_only_when_there_are_some(project, upstream, fresh_target, capsys):
    project.add_patch("tiny-tpu.diff", upstream.diff(TPU_PATCH))
    project.write_manifest([tiny_component(upstream, git(upstream.repo, "rev-parse", "HEAD"), ["tiny-tpu.diff"])])
    assert project.cli("install", python=fresh_target) == 0

    git(checkout(project), "checkout", "--", ".")  # the patch reverted by hand: clobbered
    detail = sources_row(project, fresh_target, capsys)
    assert "tiny-tpu.diff is not applied" in detail and "local edits" not in detail
    assert detail.endswith("-> run `sd-env repatch` to restore the pinned, patched, editable state")
    assert project.cli("status", python=fresh_target) == 0
    out = capsys.readouterr().out
    assert "`sd-env repatch` restores it" in out and "local edits" not in out

    assert project.cli("repatch", python=fresh_target) == 0
    (checkout(project) / "setup.py").write_text("# my experiment\n")  # a real local edit
    detail = sources_row(project, fresh_target, capsys)
    assert "local edits in setup.py" in detail
    assert "keep or discard the local edits first" in detail and detail.endswith("then run `sd-env repatch`")
    assert project.cli("status", python=fresh_target) == 0
    assert "local edits: keep them" in capsys.readouterr().out


def test_the_readme_tells_the_same_story():
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`sd-env repatch`" in readme.split("## sd-env verify", 1)[1].split("## sd-env repatch", 1)[0]
