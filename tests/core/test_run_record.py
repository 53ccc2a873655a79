"""The training data checked before a run and hashed as read, run records and `sd-env run-diff`: what makes
two runs the same, and the one changed caption that makes them differ."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from sd_env.cli import main
from sd_env.core import runrecord
from sd_env.errors import InputError
from sd_env.system.runner import Runner
from sd_env.workflows import train


def png(width: int = 4, height: int = 4, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real PNG, made by hand (the tool's venv has no Pillow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def image_folder(where: Path, captions: dict[str, str]) -> Path:
    where.mkdir(parents=True)
    for name in captions:
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(png())
    (where / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": t}) + "\n"
                                                  for n, t in captions.items()))
    return where


CAPTIONS = {"a.png": "a red square", "sub/b.png": "a blue circle"}


def test_one_changed_caption_changes_the_data_hash_and_run_diff_names_the_file(tmp_path):
    first = runrecord.fingerprint(image_folder(tmp_path / "one", CAPTIONS))
    same = runrecord.fingerprint(image_folder(tmp_path / "two", CAPTIONS))
    assert first == same and first["files"] == 3 and set(first["file_sha256"]) == {"a.png", "sub/b.png",
                                                                                    "metadata.jsonl"}
    other = image_folder(tmp_path / "three", {**CAPTIONS, "a.png": "a red squares"})
    (other / ".cache").mkdir()
    (other / ".cache" / "junk").write_text("not read by the loader")  # hidden: not training data
    changed = runrecord.fingerprint(other)
    assert changed["sha256"] != first["sha256"] and changed["files"] == 3
    found = runrecord.diff({"data": first}, {"data": changed})
    assert [line.split(":")[0] for line in found.inputs] == ["data.bytes", "data.file_sha256[metadata.jsonl]",
                                                             "data.sha256"]


def record(**changes: object) -> dict:
    base = {"version": 1, "run_id": "r1", "started": "2026-12-05T10:00:00+00:00",
            "finished": "2026-12-05T10:01:00+00:00", "seconds": 60.0, "host": "h", "output": "/o/1",
            "argv": ["--output_dir", "/o/1"], "arguments": ["--output_dir", "<output>", "--seed", "42"],
            "manifest": {"name": "m", "path": "/m.toml", "sha256": "a" * 64}, "seed": "42",
            "model": {"source": "pinned", "revision": "c" * 40, "path": "/hf/x", "file_sha256": {"unet/w": "d" * 64}},
            "final_loss": 0.25, "weights": {"file": "w.safetensors", "sha256": "e" * 64}}
    for key, value in changes.items():
        base[key] = value
    return base


def test_run_diff_calls_two_runs_identical_but_for_times_and_places(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / runrecord.RECORD).write_text(json.dumps(record()))
    (b / runrecord.RECORD).write_text(json.dumps(record(run_id="r2", started="2026-12-05T11:00:00+00:00",
                                                        finished="2026-12-05T11:01:30+00:00", seconds=90.0,
                                                        output="/o/2", argv=["--output_dir", "/o/2"],
                                                        model={**record()["model"], "path": "/other/hf/x"})))
    assert main(["run-diff", str(a), str(b / runrecord.RECORD)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("identical but for times (finished, seconds, started) and argv, model.path, output, run_id")
    (b / runrecord.RECORD).write_text(json.dumps(record(seed="7", arguments=["--output_dir", "<output>", "--seed", "7"],
                                                        final_loss=0.5)))
    assert main(["run-diff", str(a), str(b), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["identical"] is False and doc["outcome"] == ["final_loss: 0.25 vs 0.5"]
    assert doc["inputs"] == ["arguments: --seed 42 vs --seed 7", "seed: 42 vs 7"]
    assert main(["run-diff", str(a), str(tmp_path / "nowhere")]) == 2
    assert "no such run record" in capsys.readouterr().err


@pytest.mark.network
def test_an_image_folder_is_checked_before_the_run_naming_the_first_bad_file(tmp_path, hub_python):
    def check(folder: Path) -> str:
        with pytest.raises(InputError) as info:
            train._dataset(Runner(), hub_python, folder, tmp_path / "out", "text")
        return info.value.message

    good = image_folder(tmp_path / "good", CAPTIONS)
    assert train._dataset(Runner(), hub_python, good, tmp_path / "out", "text") == ("--train_data_dir", str(good))
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "sub" / "b.png").write_bytes(png()[:40])  # cut off in its image data
    assert check(broken) == f"--data {broken}: sub/b.png: does not decode as an image (" + check(broken).split(
        "does not decode as an image (", 1)[1]
    unnamed = tmp_path / "unnamed"
    shutil.copytree(good, unnamed)
    (unnamed / "c.png").write_bytes(png())
    assert check(unnamed).endswith("c.png: not named in metadata.jsonl: it has no caption")
    gone = tmp_path / "gone"
    shutil.copytree(good, gone)
    (gone / "a.png").unlink()
    assert check(gone).endswith("a.png: named by metadata.jsonl line 1, but not a file in " + str(gone))
    uncaptioned = tmp_path / "uncaptioned"
    shutil.copytree(good, uncaptioned)
    (uncaptioned / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{"file_name": "sub/b.png"}\n')
    assert 'line 2 (sub/b.png) has no caption: no string "text"' in check(uncaptioned)
    escaping = tmp_path / "escaping"
    shutil.copytree(good, escaping)
    (escaping / "metadata.jsonl").write_text('{"file_name": "../good/a.png", "text": "x"}\n')
    assert "../good/a.png: named by metadata.jsonl line 1, but not a file in" in check(escaping)
