"""Benchmark: what anchoring a bundle costs (issue 17), on a small bundle with one large member.

    python bench/trust_bench.py [--size-mb 512] [--repeat 20] [--keep]

Makes the test suite's small bundle (tests/kit/bundlekit.py: a tiny git upstream, a lock of six and
idna, sd-env's own wheels) with one extra member of --size-mb random bytes, signed with a fresh
ed25519 key, then times (median of --repeat, except the full check):
- the anchor by id: read index.json once, sha256 it, compare;
- the anchor by signature: the same plus `ssh-keygen -Y find-principals` and `-Y verify`;
- the whole `bundle_trust.verify` (anchor, confined paths, every member hashed, completeness);
- a private copy of the large member (copy + sha256), as install makes of the lock, each sdist
  and the torch_tpu wheel, so that what is hashed is what is used.
Everything is written under a temporary folder, deleted unless --keep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kit.bundlekit import make_key, make_project  # noqa: E402

from sd_env.bundle import install as bundle_install  # noqa: E402
from sd_env.bundle import trust as bundle_trust  # noqa: E402
from sd_env.cli import main  # noqa: E402
from sd_env.system.runner import Runner  # noqa: E402


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="sd-env-trust-bench-"))
    try:
        project, _ = make_project(where)
        big = where / "big" / "blob.bin"
        big.parent.mkdir()
        with big.open("wb") as out:
            for _ in range(args.size_mb):
                out.write(os.urandom(1 << 20))
        key, allowed = make_key(where / "keys", "bench@example.org")
        out = where / "out"
        started = time.monotonic()
        assert main(["bundle", "create", str(out), "-m", str(project.manifest), "--home", str(project.home),
                     "--include", f"big={big.parent}", "--sign", str(key)]) == 0
        created = time.monotonic() - started
        runner = Runner()
        ident = bundle_trust.anchor(out, runner)[0].id
        by_id = median_ms(lambda: bundle_trust.anchor(out, runner, ident), args.repeat)
        by_sig = median_ms(lambda: bundle_trust.anchor(out, runner, None, allowed), args.repeat)
        started = time.monotonic()
        checked = bundle_trust.verify(out, runner, ident, allowed)
        whole = time.monotonic() - started
        work = where / "work"
        started = time.monotonic()
        bundle_install.private_copy(checked, "extra/big/blob.bin", work)
        copy = time.monotonic() - started
        size = sum(m.size for m in checked.index.members) / 1e6
        print(f"bundle: {len(checked.index.members)} members, {size:.0f} MB (one of {args.size_mb} MB), "
              f"created and signed in {created:.1f} s")
        print(f"anchor by id:                {by_id:8.2f} ms (median of {args.repeat})")
        print(f"anchor by signature:         {by_sig:8.2f} ms (median of {args.repeat}; two ssh-keygen runs)")
        print(f"bundle_trust.verify (whole): {whole * 1000:8.0f} ms ({size / whole:.0f} MB/s, every member hashed)")
        print(f"private copy of {args.size_mb} MB:     {copy * 1000:8.0f} ms "
              f"({args.size_mb / copy:.0f} MB/s, copy + sha256)")
    finally:
        if args.keep:
            print(f"kept {where}")
        else:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
