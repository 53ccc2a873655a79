"""verify's data-parallel LoRA row (verify/parallel.py): how it judges what each process measured, and why
it does not run on a stack whose accelerate lacks the multi-device patch.

The real run on 2 emulated devices is in test_train_devices.py (it needs the multi stack's home); the
default stack's row is checked here through the CLI on the development target (slow: the whole emulated
verify), and as a plain call on a home whose state records only the tutorial's patch (fast).
"""

from __future__ import annotations

import json

import pytest

from sd_env.core import state
from sd_env.core.manifest import load
from sd_env.system.paths import Paths
from sd_env.system.runner import Runner
from sd_env.verify import parallel
from sd_env.verify.context import Context
from tests.conftest import ROOT
from tests.verify.test_verify_emulate import by_name, verify_json

DEFAULT = ROOT / "manifests" / "sc7-sd14-lora.toml"


def rank(r: int, before: str = "a", after: str = "b", device: str | None = None, losses=(1.0, 0.9)) -> dict:
    where = [device or f"tpu:{r}"]
    return {"rank": r, "loss_devices": where, "trained_devices": where, "losses": list(losses),
            "weights_before": {"sha256": before, "tensors": 64}, "weights_after": {"sha256": after, "tensors": 64}}


GOOD = {"up_max": 2e-4, "finite": True}


def test_the_row_judges_each_processs_measurements():
    assert parallel._problem_of({0: rank(0), 1: rank(1)}, 2, GOOD) is None
    assert "saw ranks [0] train, not 0 to 1" in parallel._problem_of({0: rank(0)}, 2, GOOD)
    assert ("rank 1 should train on tpu:1 alone, but its loss and trained parameters were on tpu:0"
            in parallel._problem_of({0: rank(0), 1: rank(1, device="tpu:0")}, 2, GOOD))
    differ = parallel._problem_of({0: rank(0), 1: rank(1, after="c")}, 2, GOOD)
    assert "the ranks end with different LoRA weights (sha256 rank 0 b, rank 1 c)" in differ
    assert "started from different LoRA weights" in parallel._problem_of({0: rank(0), 1: rank(1, before="x")}, 2,
                                                                        GOOD)
    assert "did not move (ranks [0, 1]" in parallel._problem_of({0: rank(0, after="a"), 1: rank(1, after="a")}, 2,
                                                                GOOD)
    assert "did not move (ranks all; max |up| 0.0)" in parallel._problem_of({0: rank(0), 1: rank(1)}, 2,
                                                                           {"up_max": 0.0, "finite": True})
    assert "a loss is not finite ({1: [1.0, nan]})" in parallel._problem_of(
        {0: rank(0), 1: rank(1, losses=(1.0, float("nan")))}, 2, GOOD)


def test_a_home_without_the_multi_device_patch_skips_the_row_and_says_why(tmp_path):
    applied = state.AppliedPatch("accelerate-0.16.0-tpu.diff", "0" * 64, "0" * 40)
    state.save(state.State({"accelerate": state.ComponentState("git", "v0.16.0", "0" * 40, patches=[applied],
                                                               version="0.16.0")}), Paths(tmp_path).state)
    ctx = Context(load(DEFAULT), Paths(tmp_path), Runner(), tmp_path / "no-python", device="tpu:0", emulated=True)
    row = parallel.check_data_parallel(ctx, [], (None, None, ""), 2)
    assert (row.name, row.status) == ("data-parallel lora (2 devices)", "skipped"), row
    assert row.detail.startswith("skipped: several devices need accelerate's multi-device patch "
                                 "accelerate-0.16.0-tpu-multi.diff"), row.detail
    assert "sd-env install -m sc7-sd14-lora-multi --home DIR" in row.detail


@pytest.mark.slow
def test_verify_emulate_devices_on_the_default_stack_reduces_but_does_not_train(verify_home, capsys):
    """The default stack (the tutorial's patch alone): the all-reduce row runs, the data-parallel row is
    skipped with its reason, never "ok", and the exit code stays that of the other rows."""
    code, doc = verify_json(verify_home, capsys, "--emulate", "--devices", "2")
    rows = by_name(doc)
    assert rows["all-reduce (2 devices)"]["status"] == "ok", rows["all-reduce (2 devices)"]
    row = rows["data-parallel lora (2 devices)"]
    assert row["status"] == "skipped" and "accelerate-0.16.0-tpu-multi.diff" in row["detail"], row
    assert "sd-env install -m sc7-sd14-lora-multi" in row["detail"]
    assert code == 0 and rows["lora step (fp32)"]["status"] == "ok", json.dumps(rows, indent=2)


def test_on_a_card_with_fewer_devices_both_rows_fail_with_the_count(tmp_path):
    """Without --emulate the rows run on the card's devices; a card that has fewer than N fails them
    before any process starts (what an SC7 card with one device would show)."""
    ctx = Context(load(DEFAULT), Paths(tmp_path), Runner(), tmp_path / "no-python", device="tpu:0", devices=2,
                  device_count=1)
    got: list = []
    parallel.card_rows(ctx, [], lambda name: None, lambda check: got.append(check) or check)
    assert [(c.name, c.status) for c in got] == [("all-reduce (2 devices)", "fail"),
                                                 ("data-parallel lora (2 devices)", "fail")]
    assert got[0].detail.startswith("--devices 2: torch_tpu sees 1 device(s) on this card")
