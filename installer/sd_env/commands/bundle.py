"""`sd-env bundle create|verify`: pack an offline bundle, or check one."""

from __future__ import annotations

import argparse
from pathlib import Path

from sd_env.bundle import create as bundle_create
from sd_env.bundle import trust as bundle_trust
from sd_env.commands import common
from sd_env.errors import InputError
from sd_env.report import dump_json, human, say
from sd_env.system.runner import Runner
from sd_env.target import pythons


def add(sub: argparse._SubParsersAction, parents: common.Parents) -> None:
    p = sub.add_parser("bundle", help="an offline bundle: create one, or check one")
    bsub = p.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    b = bsub.add_parser("create", parents=parents.common, help="pack what the manifest needs into the folder OUT")
    b.add_argument("out", type=Path, metavar="OUT")
    b.add_argument("--torch-tpu-wheel", metavar="PATH_OR_URL", default=None,
                   help="Sophgo's torch_tpu wheel to include (default: the manifest's, when present)")
    b.add_argument("--include", action="append", default=[], metavar="NAME=PATH",
                   help="an extra file or folder (weights, a dataset) as extra/NAME, sha256 per file; repeatable")
    b.add_argument("--git-mirror", metavar="PREFIX", default=None,
                   help="as for install, for components not already checked out")
    b.add_argument("--from-home", type=Path, metavar="HOME",
                   help="take checkouts from this finished home (read only; default: --home)")
    b.add_argument("--reuse", type=Path, action="append", default=[], metavar="DIR",
                   help="take locked artifacts (and pinned sdists) from this folder before downloading; repeatable")
    b.add_argument("--sign", type=Path, metavar="KEY", help="sign index.json with this SSH private key "
                   "(ssh-keygen -Y sign, namespace sd-env-bundle) into index.json.sig")
    common.python_mirror(b)
    b.add_argument("--no-python", action="store_true", help="leave out the standalone Python (hosts then need "
                   "their own Python of the manifest's version)")
    b.add_argument("--with-model", action="store_true", help="carry the model's locked files (model/), from the "
                   "Hub cache where `sd-env model fetch` put them, checked against the model lock")
    b.add_argument("--with-data", action="store_true", help="carry the pinned dataset's locked files (data/)")
    b.set_defaults(func=_cmd_bundle_create)
    b = bsub.add_parser("verify", help="check a bundle's anchor, every member and its completeness")
    b.add_argument("out", type=Path, metavar="OUT")
    b.add_argument("-m", "--manifest", type=Path, help="a trusted checkout's manifest: its lock and patches "
                   "must be the bundle's byte for byte")
    common.anchors(b)
    b.add_argument("--json", action="store_true", help="print a JSON summary")
    b.set_defaults(func=_cmd_bundle_verify)


def _cmd_bundle_create(args: argparse.Namespace) -> int:
    man, paths, runner = common.setup(args, "bundle")
    includes = {}
    for item in args.include:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or not all(c.isalnum() or c in "._-" for c in name):
            raise InputError(f"--include {item!r}", "write --include NAME=PATH, NAME of letters, digits, . _ -")
        if name in includes:
            raise InputError(f"--include {name} given twice", "give each extra folder its own NAME")
        includes[name] = Path(path)
    opts = bundle_create.CreateOptions(args.out, torch_tpu_wheel=args.torch_tpu_wheel, includes=includes,
                                       mirror=args.git_mirror, from_home=args.from_home, reuse=tuple(args.reuse),
                                       sign=args.sign, python=None if args.no_python else
                                       pythons.Sources(mirror=args.python_mirror),
                                       with_model=args.with_model, with_data=args.with_data)
    index = bundle_create.create(man, paths, runner, opts)
    if args.json:
        args._reported = True
        dump_json("bundle create", 0, {"out": str(args.out.resolve()), "id": bundle_create.bundle_id(args.out),
                                       "signed": args.sign is not None, "members": len(index.members),
                                       "bytes": index.size, "log": str(args._log)})
    return 0


def _cmd_bundle_verify(args: argparse.Namespace) -> int:
    checked = bundle_trust.verify(args.out, Runner(), args.expect, args.allowed_signers, args.manifest)
    index, anchor = checked.index, checked.anchor
    kinds: dict[str, int] = {}
    for m in index.members:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    if args.json:
        args._reported = True
        dump_json("bundle verify", 0, {"ok": True, "id": anchor.id, "anchored": anchor.how, "signer": anchor.signer,
                                       "manifest": index.manifest_name, "manifest_sha256": index.manifest_sha256,
                                       "members": len(index.members), "bytes": index.size, "kinds": kinds})
        return 0
    pins = len(checked.lock.pins) if checked.lock else 0
    shown = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    wheel = f", torch_tpu {index.torch_tpu}" if index.torch_tpu else ", no torch_tpu wheel"
    say(f"bundle {args.out} ok: {len(index.members)} members, {human(index.size)}, all sha256 match the "
        f"index; complete for manifest {index.manifest_name} (sha256 {index.manifest_sha256[:12]}): {pins} locked "
        f"packages, {len(index.components)} component sources{wheel}"
        + "".join(f", extra {n}" for n in index.extras) + f" [{shown}]")
    say(anchor.said())
    return 0
