"""`sd-env fleet-report`: one table of many hosts' `verify --json` reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from sd_env.commands import common
from sd_env.fleet import inventory as ansible_inventory
from sd_env.fleet import reports as fleet


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("fleet-report", help="one table of many hosts' `verify --json` reports (HOST.json "
                       "files, as the Ansible role fetches them): ready or not, and who differs")
    p.add_argument("reports", type=Path, metavar="REPORT_DIR")
    p.add_argument("--json", action="store_true", help="print a versioned JSON report")
    p.add_argument("--max-age", type=_age, default=fleet.DEFAULT_MAX_AGE, metavar="AGE",
                   help="a report that finished longer ago is stale, its host not ready: 90m, 12h, 2d or seconds "
                   "(default: 1d)")
    p.add_argument("--inventory", type=Path, metavar="FILE", help="the playbook's Ansible INI inventory: its "
                   "hosts without a report are listed as missing (not ready)")
    p.set_defaults(func=_cmd_fleet_report)


def _age(text: str) -> float:
    try:
        return fleet.parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_fleet_report(args: argparse.Namespace) -> int:
    inventory = ansible_inventory.hosts(args.inventory) if args.inventory else None
    hosts = fleet.read(args.reports, args.max_age, inventory)
    return fleet.render(args.reports, hosts, args.json, args.max_age)
