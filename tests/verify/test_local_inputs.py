"""verify --model/--data take local folders; the Hub settings reach the training probes."""

from __future__ import annotations

import pytest

from sd_env.cli import main
from sd_env.errors import InputError
from sd_env.verify.context import hf_env, local_inputs


def test_folders_that_cannot_be_a_model_or_a_dataset_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"no model_index\.json"):
        local_inputs(tmp_path, None)
    with pytest.raises(InputError, match=r"no metadata\.jsonl"):
        local_inputs(None, tmp_path)
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n')
    assert local_inputs(tmp_path, tmp_path) == (tmp_path.resolve(), tmp_path.resolve())


def test_verify_names_the_bad_folder_before_running_anything(tmp_path, capsys):
    assert main(["verify", "--data", str(tmp_path), "--home", str(tmp_path / "home")]) == 2
    assert f"--data {tmp_path}: no metadata.jsonl there" in capsys.readouterr().err
    assert not (tmp_path / "home").exists()


def test_hub_settings_pass_through_and_offline_is_the_default(monkeypatch):
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hf_env()["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    monkeypatch.setenv("HF_HOME", "/data/hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    env = hf_env()
    assert (env["HF_ENDPOINT"], env["HF_HOME"], env["HF_HUB_OFFLINE"]) == ("https://hf-mirror.example", "/data/hf",
                                                                          "0")
