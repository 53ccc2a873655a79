"""`sd-env fleet-report DIR`: the hosts' `verify --json` reports as one table.

Each `HOST.json` in DIR is one host's verify report (the Ansible role in deploy/ansible
fetches them). A host is ready when its verify passed and its report is fresh: one that
finished longer ago than --max-age (default one day), or that carries no finish time (an
older sd-env), is stale, and a host of --inventory with no report at all is missing;
neither is ready. A host is flagged "differs" when what it runs is not what most hosts
run: another bundle, manifest, lock or patch file (by sha256), another commit of a
component, or another version of a key package. A report that cannot be read is a host
that is not ready, never a crash of the whole report.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sd_env.errors import InputError
from sd_env.report import REPORT_VERSION, dump_json, say, table

COLUMNS = ("host", "ready", "report", "failed checks", "versions", "patches", "torch_tpu", "driver", "differs")
DEFAULT_MAX_AGE = 86400.0  # one day, in seconds
SKEW = 300.0  # a finish time this far ahead of the control machine's clock is a host's clock that is off
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> float:
    """--max-age: `90m`, `12h`, `2d`, `1w`, `30s` or plain seconds (`3600`); more than 0."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"not an age: {text!r} (say 90m, 12h, 2d, or seconds)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def human(seconds: float) -> str:
    """12 s, 90 m, 5 h, 2 d 3 h: the largest unit or two, rounded down."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} m"
    if seconds < 172800:
        return f"{seconds // 3600:.0f} h"
    days, rest = divmod(seconds, 86400)
    return f"{days:.0f} d" + (f" {rest // 3600:.0f} h" if rest >= 3600 else "")


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
    report: str = "-"  # how old the report is, or why it does not count
    finished: str | None = None  # when the host's verify finished (UTC, ISO 8601)
    age_seconds: float | None = None
    run_id: str | None = None
    bundle: str | None = None  # the id of the bundle the host was installed from
    stale: bool = False
    missing: bool = False  # in the inventory, no report


def read(folder: Path, max_age: float = DEFAULT_MAX_AGE, inventory: list[str] | None = None,
         now: datetime | None = None) -> list[Host]:
    """Every report in `folder`, judged as of `now`, then each `inventory` host without one (missing)."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", "pass the folder that received the HOST.json reports "
                         "(the playbook's sd_env_reports)")
    files = sorted(folder.glob("*.json"))
    if not files and not inventory:
        raise InputError(f"no HOST.json reports in {folder}", "run the playbook (deploy/ansible/site.yml) with "
                         f"sd_env_reports={folder}, or copy `sd-env verify --json` outputs there as HOST.json")
    now = now or datetime.now(timezone.utc)
    hosts = [_host(path, now, max_age) for path in files]
    _flag_differences(hosts)
    have = {h.name for h in hosts}
    hosts += [Host(name, False, missing=True, report="missing",
                   failed=["no report: the host was not reached, or gave none (see the playbook's output)"])
              for name in inventory or [] if name not in have]
    return hosts


def _dated(host: Host, now: datetime, max_age: float) -> Host:
    """A report counts only when it says when it finished, and that was at most `max_age` ago."""
    if host.finished is None:
        why: str | None = "it has no finish time (a report from an older sd-env)"
    else:
        try:
            finished = datetime.fromisoformat(host.finished)
            if finished.tzinfo is None:
                raise ValueError("no time zone")
            host.age_seconds = (now - finished).total_seconds()
            why = None
        except ValueError as exc:
            why = f"its finish time {host.finished!r} cannot be read ({exc})"
    if host.age_seconds is not None:
        if host.age_seconds < -SKEW:
            why = f"it finished {human(-host.age_seconds)} in the future: the host's clock is off"
        elif host.age_seconds > max_age:
            why = f"it finished {human(host.age_seconds)} ago, more than --max-age {human(max_age)}"
        ahead = host.age_seconds < 0
        host.report = f"{human(abs(host.age_seconds))} {'ahead' if ahead else 'ago'}"
    if why is not None:
        host.stale, host.ready = True, False
        host.report = "stale" if host.age_seconds is None else f"{host.report} (stale)"
        host.failed.append(f"stale report: {why}; verify the host again")
    return host


def _host(path: Path, now: datetime, max_age: float) -> Host:
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
    host.finished, host.run_id = _text(doc.get("finished")), _text(doc.get("run_id"))
    bundle = doc.get("bundle")
    host.bundle = _text(bundle.get("id")) if isinstance(bundle, dict) else None
    facts = doc.get("facts")
    if isinstance(facts, dict):
        host.identity["bundle"] = host.bundle[:12] if host.bundle else "none"
        _describe(host, facts)
    else:
        host.versions = "no facts (the report is from an older sd-env)"
    return _dated(host, now, max_age)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


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


def render(folder: Path, hosts: list[Host], as_json: bool, max_age: float = DEFAULT_MAX_AGE) -> int:
    ready = [h for h in hosts if h.ready]
    alike = not any(h.differs for h in hosts)
    stale, missing = sum(h.stale for h in hosts), sum(h.missing for h in hosts)
    code = 0 if len(ready) == len(hosts) and alike else 1
    if as_json:
        dump_json("fleet-report", code, {"folder": str(folder), "max_age_seconds": max_age, "total": len(hosts),
                                         "ready": len(ready), "stale": stale, "missing": missing, "alike": alike,
                                         "hosts": [_public(h) for h in hosts]})
        return code
    table(f"sd-env fleet-report ({folder})", COLUMNS,
          [[h.name + (f" ({h.hostname})" if h.hostname and h.hostname != h.name else ""),
            "ready" if h.ready else "NOT READY", h.report, ", ".join(h.failed) or "-", h.versions, h.patches,
            h.torch_tpu, h.driver, "; ".join(h.differs) or "-"] for h in hosts])
    summary = f"{len(ready)} of {len(hosts)} hosts ready"
    if stale or missing:
        summary += f" ({stale} stale, {missing} missing: run the playbook again for them)"
    if not alike:
        summary += "; hosts differ (see the differs column): install them from the same bundle"
    say(summary)
    return code


def _public(host: Host) -> dict[str, Any]:
    out = asdict(host)
    out.pop("identity")
    out["compared"] = host.identity
    return out
