"""Shipped ports on the tiny upstream: `repatch --to` takes the hand-made port when the plain one
conflicts (v1.4: upstream changed the patched lines), names it, and leaves the conflict to the user when
no shipped port fits."""

from __future__ import annotations

import pytest

from sd_env import ladder, manifest
from tests.conftest import git, run_in
from tests.test_repatch import (
    CORE_PY,
    OLD,
    SCALER,
    XPU_AND_TPU,
    checkout,
    install_tiny,
    rows,
    run_repatch,
    session_file,
)


@pytest.fixture
def installed(project, upstream, fresh_target):
    return install_tiny(project, upstream, fresh_target)


HEADER = "Description: tinypkg on TPU, the hand-made port for 1.4\nUpstream-Version: tinypkg v1.4\n\n"


def shipped_port(upstream, version: str, text: str) -> str:
    """A diff made on tag v`version` (the way a maintainer writes a port for that release)."""
    git(upstream.repo, "checkout", "-q", f"v{version}")
    try:
        return upstream.diff({CORE_PY: text}, header=HEADER)
    finally:
        git(upstream.repo, "checkout", "-q", "main")


def test_candidates_are_siblings_newest_first_none_newer(tmp_path):
    for name in ("acc-0.16.0-tpu.diff", "acc-0.20.0-tpu.diff", "acc-0.30.0-tpu.diff", "acc-0.9.0-tpu.diff",
                 "acc-0.20.0-other.diff", "acc-x-tpu.diff"):
        (tmp_path / name).write_text("")
    got = ladder.candidates(tmp_path / "acc-0.16.0-tpu.diff", "0.16.0", "0.29.0")
    assert [p.name for p in got] == ["acc-0.20.0-tpu.diff", "acc-0.9.0-tpu.diff"]
    assert ladder.named_for(tmp_path / "acc-0.16.0-tpu.diff", "0.16.0", "0.30.0").name == "acc-0.30.0-tpu.diff"
    assert ladder.named_for(tmp_path / "acc-0.16.0-tpu.diff", "0.16.0", "0.29.0") is None
    assert ladder.candidates(tmp_path / "acc-0.16.0-tpu.diff", "9.9", "1.0") == []  # version not in the name


@pytest.mark.parametrize("named_for_release", [True, False])
def test_conflict_takes_the_shipped_port(installed, upstream, fresh_target, capsys, named_for_release):
    # Named for 1.4 it is tried first; named for 1.3 (an older rung) only after the plain port conflicts.
    name = "tinypkg-1.4-tpu.diff" if named_for_release else "tinypkg-1.3-tpu.diff"
    shipped = installed.add_patch(name, shipped_port(upstream, "1.4", XPU_AND_TPU))
    before = shipped.read_bytes()
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.4")
    assert code == 0, err
    ported = rows(doc, "port")[0]
    assert ported["status"] == "ok"
    assert ported["detail"].startswith(f"{OLD}: shipped (took the shipped port {name} (exact")
    assert f"wrote {name}" in rows(doc, "finish")[0]["detail"]
    assert shipped.read_bytes() == before, "a shipped port is used as it is, never rewritten"
    assert [p.name for p in manifest.load(installed.manifest).component("tinypkg").patches] == [name]
    assert (checkout(installed) / CORE_PY).read_text() == XPU_AND_TPU
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
    assert not session_file(installed).exists()


def test_no_shipped_port_fits_leaves_the_plain_conflict(installed, upstream, fresh_target, capsys):
    # A "port" for 1.3 that does not apply to 1.4: the user gets the plain port's conflict, as without it.
    installed.add_patch("tinypkg-1.3-tpu.diff", shipped_port(upstream, "1.3", XPU_AND_TPU.replace("xpu", "npu")))
    code, doc, _err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.4")
    assert code == 1
    assert rows(doc, "port")[-1]["status"] == "fail"
    assert "shipped" not in rows(doc, "port")[-1]["detail"]
    work = installed.home / "repatch" / "tinypkg-1.4"
    text = (work / CORE_PY).read_text()
    assert "<<<<<<<" in text or list(work.rglob("*.rej")), "the conflict is left in the work tree"
    assert session_file(installed).exists()
