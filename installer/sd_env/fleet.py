"""`sd-env fleet-report DIR`: the hosts' `verify --json` reports as one table.

Each `HOST.json` in DIR is one host's verify report (the Ansible role in deploy/ansible
fetches them). A host is ready when its verify passed; it is flagged "differs" when what
it runs is not what most hosts run: another manifest, lock or patch file (by sha256),
another commit of a component, or another version of a key package. A report that cannot
be read is a host that is not ready, never a crash of the whole report.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sd_env.errors import InputError
from sd_env.report import REPORT_VERSION, dump_json, say, table

COLUMNS = ("host", "ready", "failed checks", "versions", "patches", "torch_tpu", "driver", "differs")


@dataclass
class Host:
    name: str  # the report's file name without .json: the inventory name
    ready: bool
    hostname: str | None = None  # what the host calls itself
    failed: list[str] = field(default_factory=list)
    versions: str = "-"
    patches: str = "-"
    torch_tpu: str = "-"
    driver: str = "-"
    differs: list[str] = field(default_factory=list)
    # What is compared across hosts: "lock" -> sha256, "patch X" -> sha256, "torch" -> version, ...
    identity: dict[str, str] = field(default_factory=dict)


def read(folder: Path) -> list[Host]:
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", "pass the folder that received the HOST.json reports "
                         "(the playbook's sd_env_reports)")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise InputError(f"no HOST.json reports in {folder}", "run the playbook (deploy/ansible/site.yml) with "
                         f"sd_env_reports={folder}, or copy `sd-env verify --json` outputs there as HOST.json")
    hosts = [_host(path) for path in files]
    _flag_differences(hosts)
    return hosts


def _host(path: Path) -> Host:
    name = path.stem
    try:
        doc = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError) as exc:
        return Host(name, False, failed=[f"unreadable report: {exc}"])
    if not isinstance(doc, dict) or doc.get("command") != "verify":
        return Host(name, False, failed=["not a `sd-env verify --json` report"])
    if not isinstance(doc.get("version"), int) or doc["version"] > REPORT_VERSION:
        return Host(name, False, failed=[f"report version {doc.get('version')!r} is newer than this sd-env "
                                         f"reads ({REPORT_VERSION}): upgrade sd-env on this machine"])
    checks = [c for c in doc.get("checks") or [] if isinstance(c, dict)]
    failed = [str(c.get("name")) for c in checks if c.get("status") == "fail"]
    if doc.get("error"):
        failed.append(f"error: {doc['error']}")
    host = Host(name, doc.get("exit_code") == 0 and not failed, doc.get("host"), failed)
    facts = doc.get("facts")
    if isinstance(facts, dict):
        _describe(host, facts)
    else:
        host.versions = "no facts (the report is from an older sd-env)"
    return host


def _describe(host: Host, facts: dict[str, Any]) -> None:
    comps = [c for c in facts.get("components") or [] if isinstance(c, dict)]
    packages = facts.get("packages") or {}
    shown = [f"{c.get('name')} {c.get('tag')}" for c in comps]
    if packages.get("torch"):
        shown.append(f"torch {packages['torch']}")
    host.versions = ", ".join(shown) or "-"
    states = {name: (p or {}).get("state") for c in comps for name, p in (c.get("patches") or {}).items()}
    bad = [f"{name}: {state}" for name, state in states.items() if state not in ("applied", "not applicable")]
    host.patches = "; ".join(bad) if bad else (f"{len(states)} applied" if states else "none")
    tpu = facts.get("torch_tpu") or {}
    host.torch_tpu = (tpu.get("version") or "not installed") + (" (emulated run)" if tpu.get("emulated") else "")
    drv = facts.get("driver") or {}
    host.driver = drv.get("version") or ("bm-smi, no version" if drv.get("bm_smi") else "none")

    ident = host.identity
    manifest = facts.get("manifest") or {}
    ident["manifest"] = f"{manifest.get('name')} {str(manifest.get('sha256'))[:12]}"
    lock = facts.get("lock")
    ident["lock"] = f"{lock.get('file')} {str(lock.get('sha256'))[:12]}" if isinstance(lock, dict) else "none"
    for c in comps:
        ident[f"{c.get('name')} commit"] = str(c.get("head"))[:12]
        for name, p in (c.get("patches") or {}).items():
            ident[f"patch {name}"] = str((p or {}).get("sha256"))[:12]
    for name, version in packages.items():
        ident[name] = str(version)


def _flag_differences(hosts: list[Host]) -> None:
    """Per compared key, the value most hosts have; each host that has another is flagged."""
    described = [h for h in hosts if h.identity]
    keys = sorted({k for h in described for k in h.identity})
    for key in keys:
        values = Counter(h.identity.get(key, "absent") for h in described)
        if len(values) < 2:
            continue
        common, count = values.most_common(1)[0]
        tie = sum(1 for n in values.values() if n == count) > 1
        for h in described:
            have = h.identity.get(key, "absent")
            if have != common or tie:
                others = ", ".join(sorted(v for v in values if v != have))
                h.differs.append(f"{key}: {have} (others: {others})")


def render(folder: Path, hosts: list[Host], as_json: bool) -> int:
    ready = [h for h in hosts if h.ready]
    alike = not any(h.differs for h in hosts)
    code = 0 if len(ready) == len(hosts) and alike else 1
    if as_json:
        dump_json("fleet-report", code, {"folder": str(folder), "total": len(hosts), "ready": len(ready),
                                         "alike": alike, "hosts": [_public(h) for h in hosts]})
        return code
    table(f"sd-env fleet-report ({folder})", COLUMNS,
          [[h.name + (f" ({h.hostname})" if h.hostname and h.hostname != h.name else ""),
            "ready" if h.ready else "NOT READY", ", ".join(h.failed) or "-", h.versions, h.patches,
            h.torch_tpu, h.driver, "; ".join(h.differs) or "-"] for h in hosts])
    summary = f"{len(ready)} of {len(hosts)} hosts ready"
    if not alike:
        summary += "; hosts differ (see the differs column): install them from the same bundle"
    say(summary)
    return code


def _public(host: Host) -> dict[str, Any]:
    out = asdict(host)
    out.pop("identity")
    out["compared"] = host.identity
    return out
