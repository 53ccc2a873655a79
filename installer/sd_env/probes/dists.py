"""Probe run by the target interpreter: how each named distribution is installed.

Standard library only, Python 3.9+. Prints one JSON object:
{name: {"versions": [...], "editable": bool, "url": str|None, "count": int}}.
"""

import json
import sys
from importlib import metadata


def describe(name):
    found = [d for d in metadata.distributions() if (d.metadata["Name"] or "").lower() == name.lower()]
    info = {"versions": [d.version for d in found], "count": len(found), "editable": False, "url": None}
    for dist in found:
        raw = dist.read_text("direct_url.json")
        if raw:
            direct = json.loads(raw)
            info["url"] = direct.get("url")
            info["editable"] = bool(direct.get("dir_info", {}).get("editable"))
    return info


print(json.dumps({name: describe(name) for name in sys.argv[1:]}))
