"""Benchmark: deploy/ansible/site.yml with a real bundle over hosts on this machine.

    python bench/fleet_bench.py BUNDLE [--hosts 2] [--python TARGET] [--work DIR] [--keep] [--echo]

BUNDLE is a folder made by `sd-env bundle create` (the default manifest's: 2.6 GB).
The hosts are tests/kit/fleetkit.py's: network namespaces on a bridge, each with its own
sshd, hostname, install folder and an empty private /root/.cache (so each host's uv
and pip caches start cold, as on a fresh server). Needs root, sshd and a Python >= 3.11
for the control machine's ansible-core (deploy/ansible/requirements.txt, in a venv
under the work folder). Runs the playbook twice and prints the wall time of each run,
and per host: the bundle copy (from "is this bundle already on the host?" to the copy's
mark), the bootstrap (sd-env's venv + install) and verify --quick. Everything is
written under the work folder (a temporary one by default), deleted unless --keep.
Disk: per host, the bundle and the environment (about 8 GB for the default manifest).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kit import fleetkit  # the fleet harness lives with the tests

SPANS = {  # figure -> (first task, last task) of the role
    "bundle copy": ("Is this bundle already on the host?", "Mark the copy complete"),
    "bootstrap": ("Run the bundle's bootstrap.sh", "Run the bundle's bootstrap.sh"),
    "verify": ("Run sd-env verify", "Run sd-env verify"),
}


def per_host(played: fleetkit.Played, host: str) -> dict[str, str]:
    out = {}
    for figure, (first, last) in SPANS.items():
        start, done = played.task_started(first), played.host_done(last, host)
        out[figure] = f"{done - start:.1f} s" if start is not None and done is not None else "skipped"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--python", help="each host's target interpreter (sd_env_python); default: sd-env "
                        "makes <home>/venv with a Python 3.9 it finds on the host")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--echo", action="store_true", help="show the playbook's output as it comes")
    args = parser.parse_args()
    why = fleetkit.available() or fleetkit.netns_works()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    control = fleetkit.control_python()
    if control is None:
        print("cannot run: no Python >= 3.11 for ansible-core", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="fleet-bench."))
    try:
        ansible_bin = fleetkit.control_venv(work / "control", control)
        with fleetkit.Fleet(work / "fleet", args.hosts, empties=("/root/.cache",)) as fleet:
            variables = {"sd_env_bundle": str(args.bundle.resolve()), "sd_env_home": str(fleet.mount / "home"),
                         "sd_env_reports": str(work / "reports"), "sd_env_verify": "quick"}
            if args.python:
                variables["sd_env_python"] = args.python
            rows = []
            for run in ("first run", "second run"):
                played = fleetkit.playbook(ansible_bin, fleet, variables, echo=args.echo)
                print(f"* {run}: {played.seconds:.1f} s, exit {played.code}, changed {played.changed()}",
                      file=sys.stderr, flush=True)
                if played.code != 0 and not args.echo:
                    print(played.output[-4000:], file=sys.stderr)
                rows.append((run, played))
        size = sum(p.stat().st_size for p in args.bundle.rglob("*") if p.is_file())
        print(f"\n{args.hosts} hosts, bundle {args.bundle} ({size / 1e9:.2f} GB)\n")
        print("| run | wall time | exit | changed per host | per host: bundle copy / bootstrap / verify --quick |")
        print("| --- | --- | --- | --- | --- |")
        for run, played in rows:
            hosts = "; ".join(f"{h}: " + " / ".join(per_host(played, h).values()) for h in sorted(played.recap))
            changed = ", ".join(f"{h}={n}" for h, n in sorted(played.changed().items()))
            print(f"| {run} | {played.seconds:.1f} s | {played.code} | {changed} | {hosts} |")
        return 0 if all(p.code == 0 for _, p in rows) else 1
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
