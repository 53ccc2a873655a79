"""bundle-index.py BUNDLE EXPECT SIGNERS: the bundle on the control machine, checked before any host sees it.

EXPECT is the bundle id the operator was given (sha256 of index.json, "" for none); SIGNERS an
allowed-signers file ("" for none); at least one must be given. The index is read once: its
sha256 must be EXPECT, its signature (index.json.sig, `ssh-keygen -Y verify`, namespace
sd-env-bundle) must verify against SIGNERS. Every member path must be relative, normalised and
a plain file here (no link on the way), so the role never packs anything outside the bundle.
Prints JSON: {"id", "signed_by", "manifest_path", "files", "signature_sha256", "index"}: "files"
are the only paths a host may ask for, "index" the very text that was checked (hosts compare
their copies with it). Run by the role on the control machine (standard library only).
"""
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path


def fail(message):
    sys.exit(f"error: {message}")


def plain_file(root, rel):
    """rel is a confined path to a regular file under root (no symbolic link on the way)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
        return False
    if any(ord(c) < 32 for c in rel) or any(p in ("", ".", "..") for p in rel.split("/")):
        return False
    here = root
    for part in rel.split("/"):
        here = here / part
        try:
            mode = os.lstat(here).st_mode
        except OSError:
            return False
        if stat.S_ISLNK(mode):
            return False
    return stat.S_ISREG(mode)


def signer(root, raw, allowed):
    sig = root / "index.json.sig"
    if not plain_file(root, "index.json.sig"):
        fail(f"{root} has no index.json.sig: the bundle is not signed (sd-env bundle create --sign KEY)")
    found = subprocess.run(["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", allowed],
                           capture_output=True, text=True)
    with tempfile.TemporaryFile() as message:
        message.write(raw)
        for principal in found.stdout.split() if found.returncode == 0 else []:
            message.seek(0)
            ok = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", allowed, "-I", principal, "-n", "sd-env-bundle",
                                 "-s", str(sig)], stdin=message, capture_output=True)
            if ok.returncode == 0:
                return principal
    fail(f"{sig} does not verify against {allowed}: refused, nothing was sent to any host")


root, expect, allowed = Path(sys.argv[1]), sys.argv[2].strip().lower(), sys.argv[3]
if not expect and not allowed:
    fail("the bundle is unanchored: set sd_env_bundle_id (the id `sd-env bundle create` printed) or "
         "sd_env_allowed_signers (an allowed-signers file for a signed bundle)")
if not plain_file(root, "index.json"):
    fail(f"{root} is not an sd-env bundle (no index.json): make one with `sd-env bundle create OUT`")
raw = (root / "index.json").read_bytes()
got = hashlib.sha256(raw).hexdigest()
expect = expect[len("sha256:"):] if expect.startswith("sha256:") else expect
if expect and got != expect:
    fail(f"{root} is bundle {got}, not sd_env_bundle_id {expect}: refused, nothing was sent to any host")
by = signer(root, raw, allowed) if allowed else None
doc = json.loads(raw)
files = ["index.json"] + (["index.json.sig"] if plain_file(root, "index.json.sig") else [])
for m in doc.get("members", []):
    if not plain_file(root, m.get("path")):
        fail(f"bundle member {m.get('path')!r} is not a confined path to a plain file of {root}: refused")
    files.append(m["path"])
sig = root / "index.json.sig"
print(json.dumps({"id": got, "signed_by": by, "manifest_path": doc.get("manifest_path"), "files": files,
                  "signature_sha256": hashlib.sha256(sig.read_bytes()).hexdigest() if "index.json.sig" in files else "",
                  "index": raw.decode("utf-8")}))
