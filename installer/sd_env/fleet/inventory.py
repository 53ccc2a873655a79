"""The host names of an Ansible INI inventory, for `sd-env fleet-report --inventory`.

Only what names hosts is read: host lines (the first word, without a `:port`) before
any section and under `[group]` sections, with Ansible's ranges expanded (`sc7-[01:20]`,
`node[a:c]`, `[1:10:2]`); `[group:vars]` sections are settings and
`[group:children]` sections name groups, not hosts. A YAML inventory is refused
with a hint (its hosts are keys, not lines). Pure apart from reading the file.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from sd_env.errors import InputError

_SECTION = re.compile(r"^\[([^\]]+)\]\s*$")
_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::([0-9]+))?\]")


def hosts(path: Path) -> list[str]:
    """Every host the inventory names, once, in the order they first appear."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"--inventory {path}: cannot read it: {exc.strerror}",
                         "pass the Ansible INI inventory the playbook ran with") from None
    if path.suffix in (".yml", ".yaml") or re.search(r"^\w[\w.-]*:\s*$", text, re.M):
        raise InputError(f"--inventory {path}: a YAML inventory; fleet-report reads INI inventories",
                         "pass an INI inventory (`ansible-inventory -i FILE --list` shows its hosts)")
    found: dict[str, None] = {}
    kind = "hosts"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        section = _SECTION.match(line)
        if section:
            _, _, suffix = section.group(1).partition(":")
            kind = suffix or "hosts"  # "vars", "children", or a plain group's hosts
            continue
        if kind != "hosts":
            continue
        first = line.split()[0]
        if re.sub(r"\[[^\]]*\]", "", first).count(":") == 1:  # `host:2222` (not IPv6): the port is no part of the name
            first = re.sub(r":[0-9]+$", "", first)
        for name in expand(first, path, number):
            found.setdefault(name, None)
    return list(found)


def expand(pattern: str, path: Path, number: int) -> list[str]:
    """Ansible's host ranges: `web[01:03]` -> web01, web02, web03; `db-[a:c]`; `[0:10:5]` with a stride."""
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    start, end, stride = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = pattern[:match.start()], pattern[match.end():]
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        values = [str(n).zfill(width) for n in range(int(start), int(end) + 1, stride)]
    elif len(start) == len(end) == 1 and start in string.ascii_letters and end in string.ascii_letters:
        values = [chr(c) for c in range(ord(start), ord(end) + 1, stride)]
    else:
        raise InputError(f"{path}:{number}: the host range [{match.group(0)[1:-1]}] is neither numeric nor "
                         "one letter to another", "write ranges as Ansible does: [01:20] or [a:f]")
    return [name for value in values for name in expand(head + value + tail, path, number)]
