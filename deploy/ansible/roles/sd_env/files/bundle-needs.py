"""bundle-needs.py BUNDLE INDEX_SHA256 < index.json: which files the host's copy of a bundle lacks.

Reads the control machine's index.json on stdin; prints JSON {"need": [...], "pruned": [...]}:
"need" lists the members that are missing here or differ (size, then sha256), plus index.json
when it differs; "pruned" lists files the index does not list, which are removed (an older
bundle's leftovers: sd-env refuses a bundle with files its index does not list).
Run by the role on each host with the host's Python (3.9+); standard library only.
"""
import hashlib
import json
import sys
from pathlib import Path


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


root, index_sha256 = Path(sys.argv[1]), sys.argv[2]
members = json.loads(sys.stdin.read())["members"]
need = []
index = root / "index.json"
if not index.is_file() or sha256(index) != index_sha256:
    need.append("index.json")
for m in members:
    path = root / m["path"]
    if not path.is_file() or path.stat().st_size != m["size"] or sha256(path) != m["sha256"]:
        need.append(m["path"])
listed = {m["path"] for m in members} | {"index.json"}
pruned = []
if root.is_dir():
    for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
        rel = path.relative_to(root).as_posix()
        if (path.is_file() or path.is_symlink()) and rel not in listed:
            path.unlink()
            pruned.append(rel)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
print(json.dumps({"need": need, "pruned": pruned}))
