"""Whether a bundle is the one it should be: anchored outside itself, and complete for a trusted manifest.

A bundle's index.json lists every member with its sha256, so one hash names the whole bundle:
the **bundle id** is the sha256 of index.json. The index cannot vouch for itself (whoever can
write a member can rewrite its line too), so trust comes from outside:

- `--expect ID`: the id the operator got from whoever made the bundle (printed by `bundle
  create` and `bundle verify`); any other bundle is refused before a byte of it is used;
- `--allowed-signers FILE`: index.json.sig, made by `bundle create --sign KEY` with OpenSSH's
  own `ssh-keygen -Y sign` (namespace "sd-env-bundle"), must verify against a key in FILE (the
  allowed-signers format git uses for signed commits); no crypto of sd-env's own;
- `-m MANIFEST` from a trusted checkout: the bundle's manifest, lock, patches and model lock
  must equal the checkout's byte for byte.

And whatever the index says, the manifest decides what a component may be: a git history's
tip must be the manifest's `commit`, an sdist must have the manifest's `sdist_sha256`; the
model lock decides what a model or data member may be (bundle/models.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sd_env.bundle import models as bundle_models
from sd_env.bundle.format import (
    INDEX,
    INTERPRETER,
    PACKAGES,
    SIGNATURE,
    BundleError,
    Index,
    Member,
    artifact_name,
    check_members,
    read_index,
    read_plain_file,
    unlisted,
)
from sd_env.core import lockfile, manifest, stacks
from sd_env.errors import CommandError, InputError
from sd_env.system.fsutil import sha256_file
from sd_env.system.runner import Runner

NAMESPACE = "sd-env-bundle"  # ssh-keygen -n: a signature made for this purpose, and no other
_ID = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")


@dataclass(frozen=True)
class Anchor:
    id: str  # sha256 of index.json
    how: str  # "id", "signature", "id and signature", or "none"
    signer: str | None = None  # the allowed-signers principal whose key signed the index

    @property
    def anchored(self) -> bool:
        return self.how != "none"

    def said(self) -> str:
        if self.how == "none":
            return (f"bundle id {self.id}: UNANCHORED (no --expect ID and no --allowed-signers FILE): "
                    "nothing outside the bundle vouches for it")
        by = f", signed by {self.signer}" if self.signer else ""
        return f"bundle id {self.id} ({'expected' if 'id' in self.how else 'not expected'}{by})"


@dataclass(frozen=True)
class Checked:
    root: Path
    index: Index
    manifest: manifest.Manifest
    lock: lockfile.Lock | None
    bytes_checked: int
    anchor: Anchor


def parse_id(text: str) -> str:
    match = _ID.match(text.strip().lower())
    if not match:
        raise InputError(f"--expect {text!r} is not a bundle id",
                         "pass the 64 hex digits `sd-env bundle create` and `bundle verify` print (sha256 of "
                         "index.json; a sha256: prefix is fine)")
    return match.group(1)


def anchor(root: Path, runner: Runner, expect: str | None = None,
           allowed_signers: Path | None = None) -> tuple[Anchor, bytes]:
    """Check index.json against the id and/or signature asked for; returns the anchor and the very
    bytes checked (the index is parsed from them, never read again)."""
    want = parse_id(expect) if expect else None
    if allowed_signers is not None and not allowed_signers.is_file():
        raise InputError(f"--allowed-signers {allowed_signers}: no such file",
                         "pass an allowed-signers file (lines of `PRINCIPAL KEYTYPE KEY`, as `ssh-keygen -Y "
                         "verify` reads it)")
    if not root.is_dir():
        raise InputError(f"{root}: no such bundle folder",
                         "pass the folder made by `sd-env bundle create` (untar a .tar bundle first)")
    try:
        raw = read_plain_file(root, INDEX)
    except (FileNotFoundError, NotADirectoryError):
        raise BundleError(f"{root}: no {INDEX}: not an sd-env bundle, or an incomplete copy",
                          "copy the whole bundle folder again, or re-create it") from None
    got = hashlib.sha256(raw).hexdigest()
    if want is not None and got != want:
        raise BundleError(f"{root} is bundle {got}, not the expected {want}: refused, nothing of it was used",
                          "get the bundle (or the id) again from whoever made it; a bundle changed after "
                          "it was made has another id")
    signer = _check_signature(root, raw, allowed_signers, runner) if allowed_signers is not None else None
    how = " and ".join(w for w, on in (("id", want), ("signature", signer)) if on) or "none"
    return Anchor(got, how, signer), raw


def _check_signature(root: Path, raw: bytes, allowed: Path, runner: Runner) -> str:
    sig = root / SIGNATURE
    try:
        read_plain_file(root, SIGNATURE)
    except (FileNotFoundError, NotADirectoryError):
        raise BundleError(f"{root} has no {SIGNATURE}: the bundle is not signed",
                          "ask for a signed bundle (`sd-env bundle create --sign KEY`), or anchor it with "
                          "--expect ID instead") from None
    text = raw.decode("utf-8", errors="strict")
    try:
        found = runner.run(["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(allowed)],
                           check=False, timeout=60)
    except CommandError as exc:  # no ssh-keygen at all
        raise BundleError(f"cannot check the signature: {exc.message.splitlines()[0]}",
                          "install OpenSSH's client (Debian: apt install openssh-client; 8.2 or newer)") from None
    principals = [p for p in found.stdout.split() if p] if found.returncode == 0 else []
    for principal in principals:
        checked = runner.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE,
                              "-s", str(sig)], check=False, timeout=60, input_text=text)
        if checked.returncode == 0:
            return principal
    said = (found.stdout + found.stderr).strip().splitlines()
    why = said[-1] if said else "no key in the file matches"
    raise BundleError(f"{root}/{SIGNATURE} does not verify against {allowed} ({why}): refused, nothing of it "
                      "was used", "the index was changed after signing, or another key signed it: get the bundle "
                      "again from whoever made it, or add their key to the allowed-signers file")


def bind_to_checkout(root: Path, index: Index, named: Path) -> Path:
    """`-m MANIFEST`: the trusted checkout wins. Its manifest, and the lock and patches the install
    uses, must be the bundle's byte for byte; returns the named manifest's path."""
    path = stacks.resolve(named)
    got = sha256_file(path)
    if got != index.manifest_sha256:
        try:
            name = manifest.load(path).name
        except InputError:
            name = "?"
        raise InputError(f"the bundle was made for manifest {index.manifest_name!r} (sha256 "
                         f"{index.manifest_sha256[:12]}), not {path} ({name!r}, sha256 {got[:12]})",
                         "install without -m to use the bundle's own manifest, or make a bundle for this one")
    trusted = manifest.load(path)
    copy = manifest.load(root / index.manifest_path)
    pairs: list[tuple[Path, Path]] = []
    if trusted.lock is not None and copy.lock is not None:
        flavour = lockfile.flavour_order(copy)[0]
        pairs.append((trusted.lock.files[flavour], copy.lock.files[flavour]))
    for ours, bundled in zip(trusted.components, copy.components):
        pairs += list(zip(ours.patches, bundled.patches))
    if trusted.model_lock.is_file() or index.member(inside(root, copy.model_lock)):
        pairs.append((trusted.model_lock, copy.model_lock))
    for mine, theirs in pairs:
        rel = inside(root, theirs)
        member = index.member(rel)
        have = sha256_file(mine) if mine.is_file() else "absent"
        if member is None or member.sha256 != have:
            raise BundleError(f"the bundle's {rel} is not the checkout's {mine} (sha256 "
                              f"{member.sha256[:12] if member else 'absent'} vs {have[:12]}): refused",
                              "the bundle was changed after it was made, or made from another checkout: "
                              "re-create it from this checkout")
    return path


def inside(root: Path, path: Path) -> str:
    """`path` relative to the bundle root, refusing anything outside it."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise BundleError(f"{path} lies outside the bundle {root}", "re-create the bundle") from None


def complete(root: Path, index: Index) -> tuple[manifest.Manifest, lockfile.Lock | None]:
    """The bundle holds what its manifest and lock need, each at the manifest's pins; returns both."""
    man = manifest.load(root / index.manifest_path)
    listed = {m.path: m for m in index.members}
    for comp in man.components:
        for patch in comp.patches:
            rel = inside(root, patch)
            if rel not in listed:
                raise BundleError(f"bundle lacks patch {rel} of {comp.name}", "re-create the bundle")
        hist = next((h for h in index.components if h.name == comp.name), None)
        if hist is None:
            raise BundleError(f"bundle lacks the source of {comp.name} (git/{comp.name}.bundle or its sdist)",
                              "re-create the bundle (it needs each component's checkout or its git remote)")
        _pinned_source(comp, hist.source, hist.commit, listed[hist.path])
    unknown = sorted({h.name for h in index.components} - {c.name for c in man.components})
    if unknown:
        raise BundleError(f"the index lists sources for {', '.join(unknown)}, which the manifest does not name",
                          "re-create the bundle")
    lock = None
    if man.lock is not None:
        flavour = lockfile.flavour_order(man)[0]
        lock = lockfile.read(man.lock.files[flavour])
        if index.lock_path != inside(root, lock.path):
            raise BundleError(f"the index names lock {index.lock_path}, the manifest uses {inside(root, lock.path)}",
                              "re-create the bundle")
        _packages_match(index, lock)
    if index.torch_tpu and man.torch_tpu and man.torch_tpu.sha256:
        wheel = listed[index.torch_tpu]
        if wheel.sha256 != man.torch_tpu.sha256:
            raise BundleError(f"bundle's {index.torch_tpu} is not the torch_tpu wheel the manifest pins "
                              f"(sha256 {man.torch_tpu.sha256})", "re-create the bundle with the right wheel")
    if index.interpreter is not None:
        got = INTERPRETER.match(index.interpreter)
        if got is None or got.group(1) != man.python:
            raise BundleError(f"the bundle's interpreter {index.interpreter} is not a Python {man.python}, which "
                              "its manifest wants", "re-create the bundle")
    bundle_models.check(root, index, man)
    if not any(listed[p].kind == "tool" and Path(p).name.startswith("sd_env-") for p in index.tool):
        raise BundleError("bundle lacks sd-env's own wheel (tool/sd_env-*.whl)", "re-create the bundle")
    return man, lock


def _pinned_source(comp: manifest.Component, source: str, commit: str, member: Member) -> None:
    """The manifest's pin, never the index's word: a git history at `commit`, an sdist at `sdist_sha256`."""
    if source == "git":
        if comp.commit is None:
            raise BundleError(f"{comp.name}: the manifest pins no commit, so its git history in the bundle "
                              "cannot be checked", f"add commit = \"{commit}\" to the [[component]] {comp.name} "
                              "after checking it upstream, then re-create the bundle")
        if commit != comp.commit:
            raise BundleError(f"{member.path} holds {comp.name} at {commit}, the manifest pins {comp.commit}",
                              "re-create the bundle from this manifest")
    elif comp.sdist_sha256 is None:
        raise BundleError(f"{comp.name}: the bundle carries its sdist, but the manifest pins no sdist_sha256 "
                          "to check it against", f"add sdist_sha256 = \"...\" (PyPI lists it for "
                          f"{comp.name}-{comp.version}.tar.gz) to the manifest, then re-create the bundle")
    elif member.sha256 != comp.sdist_sha256:
        raise BundleError(f"{member.path} has sha256 {member.sha256}, the manifest pins sdist_sha256 = "
                          f"{comp.sdist_sha256}", "re-create the bundle from this manifest")


def _packages_match(index: Index, lock: lockfile.Lock) -> None:
    by_pin: dict[str, list[Member]] = {}
    for m in index.members:
        if m.kind == "package":
            got = artifact_name(Path(m.path).name)
            if got is not None:
                by_pin.setdefault(got[0], []).append(m)
    for name, version in sorted(lock.pins.items()):
        fits = [m for m in by_pin.get(name, []) if m.sha256 in lock.hashes[name]]
        if not fits:
            raise BundleError(f"bundle lacks {name}=={version}: no file in {PACKAGES}/ has one of the lock's "
                              "sha256 for it", "re-create the bundle (the lock changed since it was made?)")
        if len(fits) > 1:
            raise BundleError(f"bundle has {len(fits)} files for {name}=={version}: "
                              + ", ".join(m.path for m in fits), "re-create the bundle")


def verify(root: Path, runner: Runner, expect: str | None = None, allowed_signers: Path | None = None,
           checkout: Path | None = None) -> Checked:
    """The whole bundle: its anchor first (nothing else is read before it passes), then every member,
    nothing unlisted, complete for its manifest (bound to `checkout`'s manifest when given)."""
    root = root.resolve()
    got, raw = anchor(root, runner, expect, allowed_signers)
    index = read_index(root, raw)
    if checkout is not None:  # before hashing gigabytes: a mismatch is known from the index alone
        bind_to_checkout(root, index, checkout)
    checked = check_members(root, index)
    extra = unlisted(root, index)
    if extra:
        raise BundleError(f"bundle has files its index does not list: {', '.join(extra[:5])}"
                          + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""),
                          "remove them (pip could pick them up) or re-create the bundle")
    man_member = index.member(index.manifest_path)
    if man_member is None or man_member.sha256 != index.manifest_sha256:
        raise BundleError(f"the index's manifest {index.manifest_path} is not listed with its hash",
                          "re-create the bundle")
    man, lock = complete(root, index)
    if man.name != index.manifest_name:
        raise BundleError(f"{index.manifest_path} is named {man.name!r}, the index says {index.manifest_name!r}",
                          "re-create the bundle")
    return Checked(root, index, man, lock, checked, got)
