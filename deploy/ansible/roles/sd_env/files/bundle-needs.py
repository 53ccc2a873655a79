"""bundle-needs.py BUNDLE INDEX_SHA256 HOME < index.json: which files the host's copy of a bundle lacks.

Reads the control machine's index.json on stdin; prints JSON {"need": [...], "pruned": [...]}:
"need" lists the members that are missing here or differ (size, then sha256), plus index.json
(and index.json.sig, when the control machine has one) when they differ; "pruned" lists files the
index does not list, which are removed (an older bundle's leftovers: sd-env refuses a bundle with
files its index does not list).

Pruning deletes, so it happens only in a folder this role made: BUNDLE is empty or absent, or
BUNDLE.copied (the role's mark) exists beside it. Never in the home or a folder above it, never
in "/". A member path that is not confined (relative, normalised) is never looked at or asked for.
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


def confined(rel):
    return (isinstance(rel, str) and rel and not rel.startswith("/") and "\\" not in rel
            and not any(ord(c) < 32 for c in rel) and not any(p in ("", ".", "..") for p in rel.split("/")))


root, index_sha256, home = Path(sys.argv[1]).absolute(), sys.argv[2], Path(sys.argv[3]).absolute()
mark = root.with_name(root.name + ".copied")
if root == Path("/") or root == home or root in home.parents:
    sys.exit(f"error: sd_env_bundle_dest {root} is the install folder {home} or a folder above it: the role "
             "removes files it does not know from its bundle folder, so it must be a folder of its own "
             "(the default: {{ sd_env_home }}/bundle)")
if root.is_dir() and any(root.iterdir()) and not mark.exists():
    sys.exit(f"error: {root} holds files and was not made by this role (no {mark.name} beside it): refusing to "
             "copy a bundle into it, which removes every file the bundle does not list; point sd_env_bundle_dest "
             "at an empty or new folder")
doc = json.loads(sys.stdin.read())
members = [m for m in doc["members"] if confined(m.get("path"))]
need = []
index = root / "index.json"
if not index.is_file() or index.is_symlink() or sha256(index) != index_sha256:
    need.append("index.json")
signature = sys.argv[4] if len(sys.argv) > 4 else ""
if signature and (not (root / "index.json.sig").is_file() or sha256(root / "index.json.sig") != signature):
    need.append("index.json.sig")
for m in members:
    path = root / m["path"]
    if path.is_symlink() or not path.is_file() or path.stat().st_size != m["size"] or sha256(path) != m["sha256"]:
        need.append(m["path"])
listed = {m["path"] for m in members} | {"index.json"} | ({"index.json.sig"} if signature else set())
pruned = []
if root.is_dir():
    for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
        rel = path.relative_to(root).as_posix()
        if (path.is_file() or path.is_symlink()) and rel not in listed:
            path.unlink()
            pruned.append(rel)
        elif path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            path.rmdir()
print(json.dumps({"need": need, "pruned": pruned}))
