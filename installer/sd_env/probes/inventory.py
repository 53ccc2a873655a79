"""Probe run by the target interpreter: the interpreter and every installed distribution.

Standard library only, Python 3.9+. Prints one JSON object.
"""

import json
import os
import sys
from importlib import metadata

dists = {}  # type: dict
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if not name:
        continue
    entry = {"version": dist.version, "path": str(getattr(dist, "_path", ""))}  # type: dict
    direct = dist.read_text("direct_url.json")  # PEP 610: where an editable install points
    if direct:
        info = json.loads(direct)
        entry["url"] = info.get("url")
        entry["editable"] = bool(info.get("dir_info", {}).get("editable"))
    if name.lower().replace("_", "-") == "torch-tpu":
        # Told apart by metadata: Google's TorchTPU and Sophgo's share the import name.
        entry["home_page"] = dist.metadata.get("Home-page") or ""
        entry["project_urls"] = dist.metadata.get_all("Project-URL") or []
        entry["author"] = dist.metadata.get("Author") or dist.metadata.get("Author-email") or ""
        entry["requires_python"] = dist.metadata.get("Requires-Python") or ""
    dists.setdefault(name, []).append(entry)

print(json.dumps({
    "python": list(sys.version_info[:3]),
    "executable": sys.executable,
    "prefix": sys.prefix,
    "is_env": sys.prefix != sys.base_prefix or os.path.isdir(os.path.join(sys.prefix, "conda-meta")),
    "dists": dists,
}))
