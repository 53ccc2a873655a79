"""`sd-env stacks` and `-m NAME` for the shipped stacks."""

from __future__ import annotations

import json

from sd_env.cli import main
from tests.conftest import ROOT


def test_stacks_lists_each_shipped_manifest(capsys):
    assert main(["stacks", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {s["name"]: s for s in doc["stacks"]}
    assert got["sc7-sd14-lora"]["python"] == "3.9" and got["sc7-sd14-lora"]["torch"] == "2.1.0"
    assert got["sc7-sd14-lora-py310"]["python"] == "3.10"
    assert got["sc7-sd14-lora-py310"]["torch_tpu"] == "2.1.0.post1"
    assert (got["sc7-sd15-lora"]["python"], got["sc7-sd15-lora"]["torch"]) == ("3.11", "2.8.0")
    assert got["sc7-sd15-lora"]["torch_tpu"] == "2.8.0.post1"
    assert all(s["description"] for s in doc["stacks"])
    assert main(["stacks"]) == 0
    table = capsys.readouterr().out
    assert "sc7-sd14-lora-py310" in table and "use one with -m NAME" in table


def test_manifest_by_name_or_path(tmp_path, capsys):
    by_name = ["status", "--json", "-m", "sc7-sd14-lora-py310", "--home", str(tmp_path / "a")]
    assert main(by_name) == 0
    capsys.readouterr()
    by_path = ["status", "--json", "-m", str(ROOT / "manifests" / "sc7-sd14-lora-py310.toml"),
               "--home", str(tmp_path / "b")]
    assert main(by_path) == 0
    capsys.readouterr()
    assert main(["status", "-m", "sc7-sd99-lora", "--home", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "no manifest 'sc7-sd99-lora': not a file here and not a shipped stack" in err
    assert "sc7-sd14-lora, sc7-sd14-lora-multi, sc7-sd14-lora-py310, sc7-sd15-lora, sc7-sd15-lora-multi" in err
