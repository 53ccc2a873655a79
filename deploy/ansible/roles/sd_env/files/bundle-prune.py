"""bundle-prune.py BUNDLE: removes files the bundle's index.json does not list, and prints them.

After a new bundle is copied over an older one, the older one's files (an older wheel)
would stay behind, and sd-env refuses a bundle with files its index does not list.
Run by the role on each host with the host's Python (3.9+).
"""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
listed = {m["path"] for m in json.loads((root / "index.json").read_text())["members"]} | {"index.json"}
for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
    rel = path.relative_to(root).as_posix()
    if path.is_file() and rel not in listed:
        path.unlink()
        print(rel)
    elif path.is_dir() and not any(path.iterdir()):
        path.rmdir()
