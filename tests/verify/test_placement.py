"""Where work ran: the judgement of measured devices (placement.py) and the watcher's records (precision.py).

The measurements themselves come from real runs: the watcher in a training process
(test_emulated_patches.py, test_verify_emulate.py), the probes' JSON (test_verify_env.py).
"""

from __future__ import annotations

import json

from sd_env.verify import placement, precision


def test_tpu_and_tpu0_are_one_device_cpu_and_another_index_are_not():
    assert placement.same("tpu:0", "tpu:0") and placement.same("tpu", "tpu:0") and placement.same("tpu:0", "tpu")
    assert not placement.same("tpu:0", "cpu") and not placement.same("tpu:0", "tpu:1")
    assert placement.same("cpu", "cpu") and not placement.same("cpu", "cuda:0")


def test_work_measured_on_the_claimed_device_passes_and_names_it():
    got = placement.measure("tpu:0", {"trained_devices": ["tpu:0"], "loss_devices": ["tpu:0"]}, placement.LORA,
                            "none")
    assert (got.device, got.problem) == ("tpu:0", None)
    assert got.said() == "trained parameters and loss on tpu:0"


def test_a_cpu_fallback_fails_and_the_row_names_the_cpu():
    got = placement.measure("tpu:0", {"trained_devices": ["cpu"], "loss_devices": ["cpu"]}, placement.LORA, "none")
    assert got.device == "cpu"
    assert got.problem == "the work did not run on tpu:0 alone: trained parameters and loss on cpu"


def test_an_optimizer_stepping_stale_cpu_copies_is_named_part_by_part():
    got = placement.measure("tpu:0", {"trained_devices": ["cpu"], "loss_devices": ["tpu:0"]}, placement.LORA,
                            "none")
    assert got.device == "cpu, tpu:0"
    assert got.problem == "the work did not run on tpu:0 alone: trained parameters on cpu, loss on tpu:0"


def test_nothing_measured_fails_saying_why_and_names_no_device():
    """The gap of issue 17: a run whose placement was not measured must not pass as the claimed device."""
    why = "the training process made no Accelerator.backward call the watcher could see"
    for data in (None, {}, {"trained_devices": [], "loss_devices": []}):
        got = placement.measure("tpu:0", data, placement.LORA, why)
        assert got.device is None
        assert got.problem == f"the device of the trained parameters and the loss could not be measured: {why}"
    half = placement.measure("cpu", {"parameter_devices": ["cpu"]}, placement.INFERENCE, "the probe reported none")
    assert half.device == "cpu"
    assert half.problem == "the device of the UNet output could not be measured: the probe reported none"


def test_the_watchers_device_records_are_read_across_processes(tmp_path):
    out = tmp_path / "watch.jsonl"
    records = [{"counts": {"train|base|mm|float32|tpu": 3}, "backward_calls": 2, "loss_devices": ["tpu:0"],
                "trained_devices": ["tpu:0"]},
               {"counts": {}, "backward_calls": 1, "loss_devices": ["cpu"], "trained_devices": ["cpu"]}]
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    got = precision.read(out)
    assert got.loss_devices == {"tpu:0", "cpu"} and got.trained_devices == {"tpu:0", "cpu"}
    assert got.backward_calls == 3 and got.as_dict()["trained_devices"] == ["cpu", "tpu:0"]
    nothing = precision.read(tmp_path / "absent.jsonl")
    assert not nothing.loss_devices and not nothing.trained_devices


def test_the_watcher_goes_first_on_the_runs_path(tmp_path):
    env = precision.watch_env(tmp_path / "w.jsonl", "/emulator:/user")
    assert env["PYTHONPATH"].split(":") == [str(precision.watcher_dir()), "/emulator", "/user"]
    assert env[precision.ENV_OUT] == str(tmp_path / "w.jsonl")
    assert precision.watch_env(tmp_path / "w.jsonl", None)["PYTHONPATH"] == str(precision.watcher_dir())
