"""--json: stdout is exactly one JSON document for every command, error or not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sd_env.cli import INTERNAL_ERROR, main
from sd_env.patching import status
from tests.conftest import tiny_component


@pytest.fixture
def small(project, upstream, monkeypatch):
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX", "SD_ENV_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    project.write_manifest([tiny_component(upstream, None)])
    return project


def one_document(capsys) -> tuple[dict, str]:
    out = capsys.readouterr()
    return json.loads(out.out), out.err  # json.loads refuses anything after the document


@pytest.mark.parametrize("args, code, error", [
    (("install", "--python", "/no/such/python"), 2, "--python: /no/such/python does not exist"),
    (("verify",), 2, "nothing to verify"),
    (("repatch", "--abort"), 2, "no repatch in progress"),
    (("repatch", "--to", "tinypkg"), 2, "no target environment to repatch"),
    (("lock",), 2, "no [lock] table"),
])
def test_errors_before_the_report_are_a_json_document(small, capsys, args, code, error):
    capsys.readouterr()
    assert small.cli(args[0], "--json", *args[1:]) == code
    doc, err = one_document(capsys)
    assert doc["command"] == args[0] and doc["exit_code"] == code and error in doc["error"], doc
    assert doc["hint"] and f"error: {doc['error']}" in err


def test_malformed_manifest_and_bad_flags_are_json_too(small, capsys):
    small.manifest.write_text(small.manifest.read_text() + "\nbogus = 1\n")
    capsys.readouterr()
    assert small.cli("status", "--json") == 2
    doc, _ = one_document(capsys)
    assert "bogus" in doc["error"] and doc["exit_code"] == 2
    assert main(["status", "--json", "--no-such-flag"]) == 2
    doc, err = one_document(capsys)
    assert doc["command"] == "status" and "--no-such-flag" in err


def test_status_json_is_one_document(small, capsys):
    capsys.readouterr()
    assert small.cli("status", "--json") == 0
    doc, _ = one_document(capsys)
    assert doc["error"] is None and doc["components"][0]["name"] == "tinypkg"


def test_a_bug_is_exit_70_with_the_traceback_on_stderr_and_in_the_log(small, capsys, monkeypatch):
    def boom(*_args, **_kw):
        raise RuntimeError("boom [/x]")

    monkeypatch.setattr(status, "collect", boom)
    capsys.readouterr()
    assert small.cli("status", "--json") == INTERNAL_ERROR == 70
    doc, err = one_document(capsys)
    assert doc["exit_code"] == 70 and doc["error"] == "internal error: RuntimeError: boom [/x]"
    assert "Traceback" in err and "bug in sd-env" in doc["hint"]
    assert "RuntimeError: boom" in Path(doc["log"]).read_text()
    # Without --json: the same error lines, and still the traceback.
    assert small.cli("status") == 70
    out = capsys.readouterr()
    assert out.out == "" and "Traceback" in out.err and "error: internal error" in out.err
