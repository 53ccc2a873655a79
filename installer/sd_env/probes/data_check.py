"""Probe: an image folder is fit to train on, checked before the run starts.

    python data_check.py FOLDER --caption-column text --suffixes .png,.jpg

Every line of metadata.jsonl is a JSON object naming an existing file (`file_name`, relative to
the folder) and its caption (the caption column, a string); every image in the folder is named
by a line; every image decodes (PIL opens and loads its pixels, as the training script's loader
will). Prints one JSON object: {"ok": true, "images", "captions"} or {"ok": false, "file", "error"}
for the first bad file, so the user reads its name before the run, not a stack trace at step 300.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from _result import report


def main(args):
    folder = Path(args.folder).resolve()
    meta = folder / "metadata.jsonl"
    suffixes = tuple(s.lower() for s in args.suffixes.split(","))

    def bad(rel, why):
        return {"ok": False, "file": rel, "error": f"{rel}: {why}"}

    named = {}
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"metadata.jsonl line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            return bad("metadata.jsonl", f"line {number} is not JSON ({exc})")
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str) or not name:
            return bad("metadata.jsonl", f'line {number} has no "file_name"')
        if not isinstance(row.get(args.caption_column), str):
            return bad("metadata.jsonl", f'line {number} ({name}) has no caption: no string "{args.caption_column}" '
                       "(the caption column)")
        path = Path(os.path.abspath(folder / name))  # normalised, links kept: a Hub snapshot's files are links
        if folder not in path.parents or not path.is_file():
            return bad(name, f"named by {where}, but not a file in {folder}")
        if path in named:
            return bad(name, f"named twice in metadata.jsonl (lines {named[path]} and {number})")
        named[path] = number
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in images:
        if path not in named:
            return bad(path.relative_to(folder).as_posix(), "not named in metadata.jsonl: it has no caption")
    from PIL import Image

    for path in images:
        try:
            with Image.open(path) as image:
                image.load()
        except Exception as exc:  # PIL raises many kinds; each means the same: it does not decode
            return bad(path.relative_to(folder).as_posix(), f"does not decode as an image ({type(exc).__name__}: "
                       f"{exc})")
    return {"ok": True, "images": len(images), "captions": len(named)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--caption-column", default="text")
    parser.add_argument("--suffixes", default=".png,.jpg,.jpeg,.webp,.bmp")
    report(main, parser.parse_args(sys.argv[1:]))
