#!/usr/bin/env python3
"""How well does patches/accelerate-0.16.0-tpu.diff port to later accelerate releases?

For each release: fetch the PyPI sdist (library code == git tag), commit it to a
scratch git repo, then try on fresh copies of that tree
  (a) git apply            exact / offset / failed
  (b) git apply -3         clean 3-way merge / conflict
  (c) GNU patch -F3        exact / offset / fuzz N / failed hunks
  (d) obsolescence         git apply -R --check on the pristine tree; anchor lines gone
and check every successful result semantically (added lines present, file compiles),
because a fuzzy "success" can put lines in the wrong place.
Stdlib only.  Usage: python bench/port_accelerate.py [--releases 0.17.0,0.19.0] [--cache DIR]
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from urllib.parse import urljoin
from urllib.request import Request, urlopen

RELEASES = ["0.16.0", "0.17.0", "0.17.1", "0.18.0", "0.19.0", "0.20.0", "0.20.3", "0.21.0",
            "0.22.0", "0.23.0", "0.24.0", "0.25.0", "0.26.0", "0.27.0", "0.28.0", "0.30.0"]
PATCH = Path(__file__).resolve().parent.parent / "patches" / "accelerate-0.16.0-tpu.diff"
PROJECT_JSON = "https://pypi.org/pypi/accelerate/json"  # per-version /V/json 404s on this mirror
# safe.directory: tarfile run as root keeps the archive's uid, which git would refuse as "dubious".
GIT = ["git", "-c", "safe.directory=*", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
       "-c", "commit.gpgsign=false"]


def run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


_index = None
def fetch(version, cache):
    """Return a verified archive for `version` from the cache, downloading it if needed.
    Prefer the sdist; fall back to the py3 wheel when PyPI has no sdist (0.24.0)."""
    global _index
    hits = [p for p in (cache / f"accelerate-{version}.tar.gz", cache / f"accelerate-{version}-py3-none-any.whl")
            if p.exists()]
    if hits:  # only ever renamed into place after its sha256 matched, so re-runs are offline
        return hits[0]
    if _index is None:
        _index = json.load(urlopen(Request(PROJECT_JSON, headers={"User-Agent": "sd-env-bench"}), timeout=60))
    files = _index["releases"].get(version, [])
    f = next((f for f in files if f["packagetype"] == "sdist"), None) or \
        next((f for f in files if f["filename"].endswith("-py3-none-any.whl")), None)
    if f is None:
        raise RuntimeError("no sdist or wheel on PyPI")
    data = urlopen(urljoin(PROJECT_JSON, f["url"]), timeout=120).read()  # mirror gives relative URLs
    if hashlib.sha256(data).hexdigest() != f["digests"]["sha256"]:
        raise RuntimeError("sha256 mismatch")
    cache.mkdir(parents=True, exist_ok=True)
    part = cache / (f["filename"] + ".part")
    part.write_bytes(data)
    return part.rename(cache / f["filename"])


def extract(archive, dest):
    """Unpack to dest so that dest/src/accelerate/accelerator.py exists (patch paths are a/src/...)."""
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest / "src", [n for n in z.namelist() if n.startswith("accelerate/")])
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest.parent / "x")
        (dest.parent / "x" / archive.name[: -len(".tar.gz")]).rename(dest)


def parse_patch(text):
    """Target path, pre-image blob id, runs of added lines (one list per contiguous '+' run), '-' lines."""
    target = re.search(r"^\+\+\+ b/(\S+)", text, re.M).group(1)
    pre = re.search(r"^index ([0-9a-f]{40})\.\.", text, re.M).group(1)
    body = text[text.index("diff --git"):].splitlines()
    runs, removed, cur = [], [], []
    for line in body:
        if line.startswith("+") and not line.startswith("+++"):
            cur.append(line[1:])
            continue
        if cur:
            runs.append(cur)
            cur = []
        if line.startswith("-") and not line.startswith("---"):
            removed.append(line[1:])
    return target, pre, runs + ([cur] if cur else []), removed


def verify(path, runs):
    """'ok' when every run of added lines is contiguous in the file and it compiles."""
    text = path.read_text()
    lines = text.splitlines()
    missing = sum(1 for r in runs if not any(lines[i:i + len(r)] == r for i in range(len(lines))))
    problems = [f"{missing}/{len(runs)} added blocks missing"] if missing else []
    try:
        compile(text, str(path), "exec")
    except SyntaxError as e:
        problems.append(f"no compile (line {e.lineno})")
    return "; ".join(problems) or "ok"


def hunk_report(out):
    """Per-hunk summary of `git apply -v` / GNU patch output, e.g. "h1 fuzz 1 +6, h2 FAILED".
    git -v names only hunks that moved ("Hunk #2 succeeded at 396 (offset 17 lines)")."""
    parts = []
    hunk_re = r"Hunk #(\d+) (?:succeeded at \d+(?: with (fuzz \d+))?(?: \(offset (-?\d+) lines?\))?|(FAILED))"
    for m in re.finditer(hunk_re, out):
        n, fuzz, off, failed = m.groups()
        parts.append(f"h{n} " + (failed or " ".join(filter(None, [fuzz, off and f"{int(off):+d}"])) or "exact"))
    return ", ".join(parts)


def try_release(version, archive, blob16, pre_id, target, runs, removed, scratch):
    base = scratch / version / "base"
    t0 = time.perf_counter()
    extract(archive, base)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", f"accelerate {version}"]):
        rc, out = run(GIT + cmd, base)
        assert rc == 0, out
    # git apply -3 looks up the pre-image blob named on the patch's `index` line.
    _, bid = run([*GIT, "hash-object", "-w", str(blob16)], base)
    assert bid.strip() == pre_id, f"0.16.0 accelerator.py hashes to {bid.strip()}, patch expects {pre_id}"
    res = {"setup": time.perf_counter() - t0, "notes": []}
    if archive.name.endswith(".whl"):
        res["notes"].append("wheel (no sdist on PyPI)")

    # (d) obsolete upstream? the reverse patch applying to the pristine tree means it is already in.
    pristine = (base / target).read_text().splitlines()
    rc, _ = run([*GIT, "apply", "-R", "--check", str(PATCH)], base)
    if rc == 0:
        res["notes"].append("ALREADY UPSTREAM (-R --check ok)")
    gone = [line.strip() for line in removed if line not in pristine]
    if gone:  # the construct the patch rewrites no longer exists verbatim: a port needs a human
        res["notes"].append("'-' line gone upstream: " + ", ".join(f"`{g[:40]}…`" for g in gone))
    if not any("GradScaler(**kwargs)" in line for line in pristine):
        res["notes"].append("no `GradScaler(**kwargs)` line")

    def fresh(name):
        dst = scratch / version / name
        shutil.copytree(base, dst, symlinks=True)
        # The copied index holds the old inodes/mtimes; without a refresh git apply -3 (which
        # implies --index) reports "does not match index" even on 0.16.0 itself.
        run([*GIT, "update-index", "-q", "--refresh"], dst)
        return dst

    # (a) plain git apply: atomic, 0-fuzz; offsets show in -v output.
    w = fresh("a")
    t = time.perf_counter()
    rc, out = run([*GIT, "apply", "-v", str(PATCH)], w)
    res["t_a"] = time.perf_counter() - t
    where = re.search(r"patch failed: \S+:(\d+)", out)
    res["a"] = (f"failed (hunk at {where.group(1) if where else '?'})" if rc
                else f"offset ({hunk_report(out)})" if "offset" in out else "exact")
    res["v_a"] = None if rc else verify(w / target, runs)

    # (b) git apply -3: 3-way merge against the recorded pre-image blob.
    w = fresh("b")
    t = time.perf_counter()
    rc, out = run([*GIT, "apply", "-3", "-v", str(PATCH)], w)
    res["t_b"] = time.perf_counter() - t
    _, unmerged = run([*GIT, "diff", "--name-only", "--diff-filter=U"], w)
    markers = (w / target).read_text().count("\n<<<<<<< ")
    if unmerged.strip() or markers or "with conflicts" in out:
        res["b"], res["v_b"] = f"conflict ({markers} region{'s' * (markers != 1)})", None
    elif rc:
        res["b"], res["v_b"] = "failed: " + out.strip().splitlines()[-1][:60], None
    else:
        res["b"], res["v_b"] = "clean", verify(w / target, runs)

    # (c) GNU patch -F3: dry-run first (like a careful installer), then for real.
    w = fresh("c")
    t = time.perf_counter()
    cmd = ["patch", "-p1", "-F3", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-", "-i", str(PATCH)]
    rc, out = run([*cmd, "--dry-run"], w)
    if rc == 0:
        rc, out = run(cmd, w)
    res["t_c"] = time.perf_counter() - t
    detail = hunk_report(out)
    if rc:  # GNU patch applies the good hunks of a bad file, so say which hunk failed
        res["c"], res["v_c"] = f"failed ({detail or out.strip()[-60:]})", None
    else:
        res["c"] = ("fuzz" if "fuzz" in out else "offset" if "offset" in out else "exact") + \
                   (f" ({detail})" if "fuzz" in out or "offset" in out else "")
        res["v_c"] = verify(w / target, runs)

    # (e) sd-env's own porting (what `sd-env repatch` runs): obsolete, exact, offset, 3-way; no fuzz.
    w = fresh("e")
    t = time.perf_counter()
    got = sd_port.port(Runner(), w, sd_patches.load(PATCH), blobs_from=base)
    res["t_e"] = time.perf_counter() - t
    res["e"] = got.method + (f": {got.conflicts[0].split(', ', 1)[-1]}" if got.conflicts else "")
    res["v_e"] = verify(w / target, runs) if got.ported else None
    return res


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "installer"))
from sd_env.patching import patches as sd_patches  # noqa: E402
from sd_env.patching import port as sd_port  # noqa: E402
from sd_env.system.runner import Runner  # noqa: E402

# The extracted trees may belong to the archive's owner: let git (ours included) use them.
os.environ.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="safe.directory", GIT_CONFIG_VALUE_0="*")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--releases", default=",".join(RELEASES), help="comma-separated versions")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/sd-env-bench/accelerate-sdists")
    ap.add_argument("--keep", action="store_true", help="keep the scratch trees and print where")
    args = ap.parse_args()
    for tool in ("git", "patch"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (apt-get install {tool})")
    wall = time.perf_counter()
    text = PATCH.read_text()
    target, pre_id, runs, removed = parse_patch(text)
    scratch = Path(tempfile.mkdtemp(prefix="port-accelerate-"))
    # The 0.16.0 accelerator.py supplies the pre-image blob for every release's 3-way merge.
    t = time.perf_counter()
    with tarfile.open(fetch("0.16.0", args.cache)) as tf:
        blob16 = scratch / "accelerator-0.16.0.py"
        blob16.write_bytes(tf.extractfile(f"accelerate-0.16.0/{target}").read())
    t_dl, results, skipped = time.perf_counter() - t, {}, []
    for v in args.releases.split(","):
        t = time.perf_counter()
        try:
            archive = fetch(v, args.cache)
        except Exception as e:  # network, 404, hash mismatch: skip, but say so
            skipped.append(f"{v} ({e})")
            continue
        t_dl += time.perf_counter() - t
        results[v] = try_release(v, archive, blob16, pre_id, target, runs, removed, scratch)

    def mark(s):
        return "" if s is None else (" ✓" if s == "ok" else f" ✗ {s}")
    print("| release | git apply | git apply -3 | patch -F3 | sd-env repatch | added lines present / compiles | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for v, r in results.items():
        checks = [f"{m}: {r['v_' + m]}" for m in "abce" if r["v_" + m] is not None]
        print(f"| {v} | {r['a']}{mark(r['v_a'])} | {r['b']}{mark(r['v_b'])} | {r['c']}{mark(r['v_c'])} "
              f"| {r['e']}{mark(r['v_e'])} | {'; '.join(checks) or 'n/a (nothing applied)'} "
              f"| {'; '.join(r['notes'])} |")
    n = len(results) or 1
    print(f"\nTimings over {len(results)} releases (total / mean per release):")
    for key, label in (("setup", "extract + git init/commit"), ("t_a", "git apply -v"),
                       ("t_b", "git apply -3 -v"), ("t_c", "patch -F3 dry-run + apply"),
                       ("t_e", "sd-env port (all steps it needed)")):
        tot = sum(r[key] for r in results.values())
        print(f"- {label}: {tot * 1000:.0f} ms / {tot * 1000 / n:.1f} ms")
    print(f"- fetch (cache hit or download + sha256): {t_dl * 1000:.0f} ms")
    if skipped:
        print("\nSkipped: " + "; ".join(skipped))
    if args.keep:
        print(f"\nScratch trees kept in {scratch}")
    else:
        shutil.rmtree(scratch)
    print(f"\nTotal wall time: {time.perf_counter() - wall:.2f} s")


if __name__ == "__main__":
    main()
