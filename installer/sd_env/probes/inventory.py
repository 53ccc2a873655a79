"""Probe run by the target interpreter: the interpreter and every installed distribution.

Standard library only, Python 3.9+. Prints one JSON object.
"""

import json
import os
import platform
import sys
from importlib import metadata

dists = {}  # type: dict
for dist in metadata.distributions():
    meta = dist.metadata  # parsed once: each dist.metadata access reads and parses the file again
    name = meta["Name"]
    if not name:
        continue
    # Requires-Dist, else (an egg-info) requires.txt as importlib.metadata converts it.
    requires = meta.get_all("Requires-Dist") or dist.requires or []
    entry = {"version": meta["Version"], "path": str(getattr(dist, "_path", "")), "requires": requires}  # type: dict
    direct = dist.read_text("direct_url.json")  # PEP 610: where an editable install points
    if direct:
        info = json.loads(direct)
        entry["url"] = info.get("url")
        entry["editable"] = bool(info.get("dir_info", {}).get("editable"))
    if name.lower().replace("_", "-") == "torch-tpu":
        # Told apart by metadata: Google's TorchTPU and Sophgo's share the import name.
        entry["home_page"] = meta.get("Home-page") or ""
        entry["project_urls"] = meta.get_all("Project-URL") or []
        entry["author"] = meta.get("Author") or ""
        entry["author_email"] = meta.get("Author-email") or ""
        entry["summary"] = meta.get("Summary") or ""
        entry["requires_python"] = meta.get("Requires-Python") or ""
    dists.setdefault(name, []).append(entry)

# PEP 508 marker variables, as packaging.markers.default_environment() computes them,
# so the requirements check can judge markers for this interpreter from outside it.
impl = sys.implementation
impl_version = ".".join(str(n) for n in impl.version[:3])
if impl.version.releaselevel != "final":
    impl_version += impl.version.releaselevel[0] + str(impl.version.serial)
markers = {
    "implementation_name": impl.name, "implementation_version": impl_version, "os_name": os.name,
    "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(), "platform_python_implementation":
    platform.python_implementation(), "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}

print(json.dumps({
    "python": list(sys.version_info[:3]),
    "markers": markers,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "is_env": sys.prefix != sys.base_prefix or os.path.isdir(os.path.join(sys.prefix, "conda-meta")),
    "path": sys.path,  # where the distributions were looked for (inventory_cache.py watches these folders)
    "dists": dists,
}))
