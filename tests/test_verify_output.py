"""verify's output on a small project (no torch): hostile probe output, rows as they finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_in, tiny_component

# Runs first in every process of the target: the device probe writes GBK to stderr and exits 3,
# as a vendor's driver message in a Chinese locale would.
GBK_PTH = ('import sys, os; exec("if sys.argv and sys.argv[0].endswith(\\"device.py\\"):\\n'
           '    sys.stderr.buffer.write(\\"驱动错误: 找不到设备 [/tags]\\".encode(\\"gbk\\")); sys.stderr.flush(); '
           'os._exit(3)")\n')


def add_pth(python: Path, name: str, text: str) -> None:
    site = run_in(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    Path(site, name).write_text(text, encoding="utf-8")


@pytest.fixture
def small(project, upstream):
    project.write_manifest([tiny_component(upstream, None)])
    return project


def test_probe_writing_gbk_is_a_failed_row_not_a_crash(small, fresh_target, capsys):
    add_pth(fresh_target, "gbk.pth", GBK_PTH)
    capsys.readouterr()
    code = small.cli("verify", "--quick", "--json", python=fresh_target)
    out = capsys.readouterr()
    doc = json.loads(out.out)
    row = {c["name"]: c for c in doc["checks"]}["torch_tpu"]
    assert code == 1 and row["status"] == "fail", row
    assert "exited with 3" in row["detail"] and "[/tags]" in row["detail"]
