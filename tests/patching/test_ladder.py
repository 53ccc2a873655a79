"""Shipped ports on the tiny upstream: `repatch --to` takes the hand-made port when the plain one
conflicts (v1.4: upstream changed the patched lines), names it, and leaves the conflict to the user when
no shipped port fits."""

from __future__ import annotations

import pytest

from sd_env.core import manifest
from sd_env.patching import ladder, patches
from tests.conftest import SETUP, git, run_in
from tests.patching.test_repatch import (
    CORE_PY,
    OLD,
    SCALER,
    XPU,
    XPU_AND_TPU,
    add_device,
    checkout,
    install_tiny,
    rows,
    run_repatch,
    session_file,
    status_row,
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
    # The release in the file's own name counts, not the one the checkout holds (a shipped port of an
    # older rung stays in the series after a jump): 0.16.0 here, whatever the checkout's release.
    assert [p.name for p in ladder.candidates(tmp_path / "acc-0.16.0-tpu.diff", "9.9", "0.10")] == [
        "acc-0.9.0-tpu.diff"]
    assert ladder.nearest(tmp_path / "acc-0.16.0-tpu.diff", "0.20.1", "1.0.1").name == "acc-0.30.0-tpu.diff"
    assert ladder.nearest(tmp_path / "acc-0.30.0-tpu.diff", "0.30.1", "0.22.0").name == "acc-0.20.0-tpu.diff"
    assert ladder.nearest(tmp_path / "acc-0.16.0-tpu.diff", "", "0.16.1").name == "acc-0.16.0-tpu.diff"
    assert ladder.renamed("acc-0.20.0-tpu.diff", "1.0.1", "0.22.0") == "acc-1.0.1-tpu.diff"
    assert ladder.renamed("tpu.diff", "1.1") == "tpu-1.1.diff"


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


def test_no_shipped_port_fits_leaves_the_conflict_of_the_nearest_rung(installed, upstream, fresh_target, capsys):
    # A "port" for 1.3 that does not apply to 1.4: the plain port starts from it (the rung nearest to 1.4,
    # merged from its own release's pre-image, fetched for this) and its conflict is left to the user.
    installed.add_patch("tinypkg-1.3-tpu.diff", shipped_port(upstream, "1.3", XPU_AND_TPU.replace("xpu", "npu")))
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.4")
    assert code == 1
    assert rows(doc, "port")[-1]["status"] == "fail"
    detail = rows(doc, "port")[-1]["detail"]
    assert detail.startswith(f"{OLD}: started from tinypkg-1.3-tpu.diff, the nearest shipped port below 1.4; "
                             "3-way merge left conflict markers"), detail
    assert "took the shipped port" not in detail
    assert "fetching tinypkg v1.3 for the pre-image of tinypkg-1.3-tpu.diff" in err
    work = installed.home / "repatch" / "tinypkg-1.4"
    text = (work / CORE_PY).read_text()
    assert "<<<<<<<" in text or list(work.rglob("*.rej")), "the conflict is left in the work tree"
    assert session_file(installed).exists()


# Releases after v1.7 for the jumps between rungs: v1.8 brings xpu (the TPU patch of v1.0 no longer
# applies), v1.9 moves it down (a port made on v1.8 applies with an offset), v1.10 adds npu on the same
# lines (a port made on v1.8 conflicts), v1.11 changes its context (a port made on v1.8 merges 3-way).
NPU = add_device(XPU, ("xpu", "xpu.GradScaler"), "npu", "npu.GradScaler")
NPU_AND_TPU = add_device(XPU_AND_TPU, ("xpu", "xpu.GradScaler"), "npu", "npu.GradScaler")
LATER = {"1.8": XPU, "1.9": XPU.replace('"""\n', '"""\n\nimport os\n', 1), "1.10": NPU,
         "1.11": XPU.replace('if name.startswith("xpu"):', 'if name.startswith(("xpu", "xla")):')
         .replace('if kind == "xpu":', 'if kind in ("xpu", "xla"):')}


def release_later(upstream) -> None:
    for version, text in LATER.items():
        upstream.write("setup.py", SETUP.replace('version="1.0"', f'version="{version}"'))
        upstream.write("src/tinypkg/__init__.py", f'__version__ = "{version}"\n')
        upstream.write(CORE_PY, text)
        upstream.release(f"v{version}", f"tinypkg {version}")


def series(project) -> list[str]:
    return [p.name for p in manifest.load(project.manifest).component("tinypkg").patches]


def test_a_chain_of_jumps_takes_the_shipped_port_that_fits_whatever_the_start(installed, upstream, fresh_target,
                                                                              capsys):
    """1.0 -> 1.9 ends on the shipped port named 1.8; from there (a file not named for the release the
    checkout holds, whose pre-image the 1.9 checkout lacks) -> 1.10 takes the port named 1.10; -> 1.0
    takes the original patch back."""
    release_later(upstream)
    installed.add_patch("tinypkg-1.8-tpu.diff", shipped_port(upstream, "1.8", XPU_AND_TPU))
    installed.add_patch("tinypkg-1.10-tpu.diff", shipped_port(upstream, "1.10", NPU_AND_TPU))
    for version, taken in (("1.9", "tinypkg-1.8-tpu.diff"), ("1.10", "tinypkg-1.10-tpu.diff"), ("1.0", OLD)):
        code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", f"tinypkg=={version}")
        assert code == 0, f"--to {version}: {err}"
        detail = rows(doc, "port")[0]["detail"]
        assert f": shipped (took the shipped port {taken} (" in detail, (version, detail)
        assert series(installed) == [taken]
        assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
        assert run_in(fresh_target, "import tinypkg; print(tinypkg.__version__)") == version
        assert status_row(installed, fresh_target, capsys)["patches"] == {taken: "applied"}
    assert sorted(p.name for p in (installed.root / "patches").iterdir()) == sorted(
        [OLD, "tinypkg-1.8-tpu.diff", "tinypkg-1.10-tpu.diff"]), "no port was written: each stop took a shipped one"


def test_a_jump_past_the_ladder_starts_from_the_nearest_rung(installed, upstream, fresh_target, capsys):
    """1.0 -> 1.11, past the newest shipped port (1.8): the port starts from 1.8, not from the 1.0 patch
    (whose 3-way merge conflicts with xpu), and merges it 3-way from v1.8's pre-image, fetched for this."""
    release_later(upstream)
    installed.add_patch("tinypkg-1.8-tpu.diff", shipped_port(upstream, "1.8", XPU_AND_TPU))
    code, doc, err = run_repatch(installed, fresh_target, capsys, "--to", "tinypkg==1.11")
    assert code == 0, err
    detail = rows(doc, "port")[0]["detail"]
    assert detail.startswith(f"{OLD}: 3-way (started from tinypkg-1.8-tpu.diff, the nearest shipped port below "
                             "1.11; 3-way merge from the recorded pre-image)"), detail
    assert "started from tinypkg-1.8-tpu.diff" in err
    new = installed.root / "patches" / "tinypkg-1.11-tpu.diff"
    assert series(installed) == [new.name]
    assert patches.load(new).header["Ported-From"] == "tinypkg-1.8-tpu.diff (3-way, by sd-env repatch)"
    text = (checkout(installed) / CORE_PY).read_text()
    assert 'if name.startswith(("xpu", "xla")):' in text and 'return "torch_tpu.GradScaler"' in text
    assert run_in(fresh_target, SCALER) == "torch_tpu.GradScaler"
