# Sourced by bootstrap.sh for `./bootstrap.sh --bundle OUT`: the bundle's anchor, then
# sd-env's own venv from the wheels its index lists, with no network. Defines flag_arg,
# bundle_arg, bundle_anchor, bundle_python, bundle_interpreter, bundle_manifest, bundle_tool,
# and run_or_die (bootstrap.sh's own install uses it too).

# run_or_die FOLDER ERROR HINT CMD...: runs CMD (which writes into FOLDER: a venv, a pip install);
# when it fails, shows its output and stops with ERROR and HINT, or with a full disk's own
# message when that is what stopped it (HINT would send the user after the wrong thing).
# CMD gets a TMPDIR of its own, removed after: Python 3.9's ensurepip leaves the CA bundle it
# extracted there (tmpXXXXcacert.pem, 275 KB per venv).
run_or_die() {
  local folder=$1 error=$2 hint=$3 out scratch status=0
  shift 3
  scratch=$(mktemp -d 2>/dev/null || true)  # none on a full disk: CMD then says why it failed
  out=$(env ${scratch:+"TMPDIR=$scratch"} "$@" 2>&1) || status=$?
  [ -z "$scratch" ] || rm -rf "$scratch"
  if [ "$status" = 0 ]; then
    [ -z "$out" ] || printf '%s\n' "$out" >&2
    return 0
  fi
  printf '%s\n' "$out" >&2
  case $out in
    *"No space left on device"*|*"Disk quota exceeded"*)
      die "$error: the disk is full" "free space on the disk that holds $folder (df -h $folder) and run again" 1 ;;
  esac
  die "$error" "$hint" 1
}

# flag_arg FLAG ARGS...: prints the value of FLAG (as `FLAG VALUE` or `FLAG=VALUE`) among ARGS, if any.
flag_arg() {
  local flag=$1
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      "$flag") printf '%s\n' "${2:-}"; return ;;
      "$flag"=*) printf '%s\n' "${1#"$flag"=}"; return ;;
    esac
    shift
  done
}

# bundle_arg ARGS...: prints the value of --bundle (or --bundle=) among ARGS, if any.
bundle_arg() { flag_arg --bundle "$@"; }

# bundle_anchor BUNDLE EXPECT SIGNERS SCRATCH: copies BUNDLE/index.json into SCRATCH (a private
# folder) and checks that copy against EXPECT (the bundle id: sha256 of index.json) and/or the
# OpenSSH signature index.json.sig against the allowed-signers file SIGNERS, before anything of
# the bundle is used; every later step reads only the checked copy. Neither given: a warning that
# nothing outside the bundle vouches for it. Prints the path of the checked copy.
bundle_anchor() {
  local bundle=$1 expect=$2 signers=$3 scratch=$4 copy id principal
  copy=$scratch/index.json
  [ -f "$bundle/index.json" ] && [ ! -L "$bundle/index.json" ] || die "$bundle is not an sd-env bundle (no index.json)" \
    "pass the folder made by \`sd-env bundle create\`"
  cp "$bundle/index.json" "$copy"
  id=$(sha256sum "$copy" | cut -d' ' -f1)
  if [ -n "$expect" ]; then
    expect=${expect#sha256:}
    [ "$id" = "$expect" ] || die "$bundle is bundle $id, not the expected $expect: refused, nothing of it was used" \
      "get the bundle (or the id) again from whoever made it; a bundle changed after it was made has another id" 1
  fi
  if [ -n "$signers" ]; then
    [ -f "$signers" ] || die "--allowed-signers $signers: no such file" "pass an allowed-signers file (ssh-keygen -Y verify's format)"
    command -v ssh-keygen >/dev/null || die "--allowed-signers needs ssh-keygen" "install OpenSSH's client (Debian: apt install openssh-client)"
    [ -f "$bundle/index.json.sig" ] || die "$bundle has no index.json.sig: the bundle is not signed" \
      "ask for a signed bundle (sd-env bundle create --sign KEY), or anchor it with --expect ID" 1
    cp "$bundle/index.json.sig" "$scratch/index.json.sig"
    principal=""
    for p in $(ssh-keygen -Y find-principals -s "$scratch/index.json.sig" -f "$signers" 2>/dev/null); do
      if ssh-keygen -Y verify -f "$signers" -I "$p" -n sd-env-bundle -s "$scratch/index.json.sig" < "$copy" >/dev/null 2>&1; then
        principal=$p
        break
      fi
    done
    [ -n "$principal" ] || die "$bundle/index.json.sig does not verify against $signers: refused, nothing of it was used" \
      "the index was changed after signing, or another key signed it" 1
    say "bundle $id: signature by $principal verified"
  fi
  [ -n "$expect" ] || [ -n "$signers" ] || \
    say "WARNING: bundle $id is UNANCHORED: nothing outside it vouches for it (pass --expect ID or --allowed-signers FILE)"
  printf '%s\n' "$copy"
}

# bundle_python INDEX: the Python version (3.N) the bundle was made for, from a checked index copy.
bundle_python() {
  sed -n 's/^ *"python": *"\(3\.[0-9][0-9]*\)",\{0,1\} *$/\1/p' "$1" | head -n 1
}

# bundle_interpreter BUNDLE INDEX HOME SCRATCH X.Y: the standalone CPython X.Y the bundle carries (the
# member its checked index copy INDEX names as "interpreter"), copied into SCRATCH, checked against
# the index's sha256 and unpacked into HOME/python/NAME (as sd-env's pythons.py does); prints the
# interpreter's path. Only bash, coreutils, sed, grep, gzip and tar: the host may have no Python.
bundle_interpreter() {
  local bundle=$1 index=$2 home=$3 scratch=$4 want=$5 rel entry sha name dest tmp
  rel=$(sed -n 's/^ *"interpreter": *"\([^"]*\)",\{0,1\} *$/\1/p' "$index" | head -n 1)
  if [ -z "$rel" ]; then
    say "the bundle carries no Python (made with --no-python, or by an older sd-env)"
    return 1
  fi
  # the rules of bundle/format.py's confine: a plain file python/cpython-X.Y.Z...tar.gz, listed with kind python
  [[ $rel =~ ^python/cpython-${want//./\\.}\.[0-9]+[A-Za-z0-9._+-]*\.tar\.gz$ ]] \
    || { say "the bundle's interpreter $rel is not a Python $want archive: not used"; return 1; }
  entry=$(grep -F -A 3 "\"path\": \"$rel\"," "$index")
  sha=$(printf '%s\n' "$entry" | sed -n 's/^ *"sha256": *"\([0-9a-f]\{64\}\)",\{0,1\} *$/\1/p' | head -n 1)
  if [ -z "$sha" ] || ! printf '%s\n' "$entry" | grep -q '^ *"kind": *"python" *$'; then
    say "the bundle's index does not list $rel as its interpreter: not used"
    return 1
  fi
  if [ -L "$bundle/python" ] || [ -L "$bundle/$rel" ] || [ ! -f "$bundle/$rel" ]; then
    say "bundle member $rel is missing or a symbolic link: not used"
    return 1
  fi
  cp "$bundle/$rel" "$scratch/python.tar.gz"  # what is checked is what is unpacked
  if [ "$(sha256sum "$scratch/python.tar.gz" | cut -d' ' -f1)" != "$sha" ]; then
    say "bundle member $rel does not match the index (copy the bundle again): not used"
    return 1
  fi
  name=${rel#python/}
  name=${name%.tar.gz}
  dest=$home/python/$name
  say "no Python $want on this host: unpacking the bundle's $name ($(du -h "$scratch/python.tar.gz" | cut -f1)) into $dest"
  mkdir -p "$home/python"
  tmp=$(mktemp -d "$home/python/.unpack-XXXXXX")
  if ! tar -xzf "$scratch/python.tar.gz" -C "$tmp" --no-same-owner || [ ! -x "$tmp/python/bin/python$want" ]; then
    say "$rel did not unpack to python/bin/python$want"
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$dest"
  mv "$tmp/python" "$dest"
  rm -rf "$tmp" "$scratch/python.tar.gz"
  echo "$dest/bin/python$want"
}

# bundle_manifest PY BUNDLE INDEX: the path of the bundle's own manifest copy.
bundle_manifest() {
  "$1" -c 'import json, sys; print(sys.argv[2] + "/" + json.load(open(sys.argv[1]))["manifest_path"])' \
    "$3" "$2"
}

# bundle_tool PY BUNDLE TOOL INDEX SCRATCH: (re)makes the venv TOOL with exactly the wheels the
# checked index copy INDEX lists for it (its "tool" list), installed by path with their sha256
# (pip --require-hashes, --no-deps, --only-binary :all:), after checking each is a plain file of
# the bundle at its listed hash; nothing else in tool/ or packages/ is ever looked at. pip's
# config files and every PIP_*/UV_* variable are ignored.
bundle_tool() {
  local py=$1 bundle=$2 tool=$3 index=$4 scratch=$5 stamp
  stamp=$(tool_requirements "$py" "$bundle" "$index" "$scratch/tool-requirements.txt") \
    || die "the bundle's tool wheels are not what its index lists" "copy the bundle again (sd-env bundle verify names the damage)" 1
  # Installed from these very wheels: nothing to do (the install that follows checks the whole bundle).
  if [ -x "$tool/bin/sd-env" ] && [ "$(cat "$tool/.sd-env-stamp" 2>/dev/null)" = "$stamp" ]; then
    say "sd-env is installed in $tool (from the bundle)"
    return
  fi
  say "installing sd-env into $tool from the bundle (its listed wheels only, by hash; no index; with $py)"
  rm -rf "$tool"
  run_or_die "$tool" "could not create the venv $tool" "$py needs its venv module (Debian: sudo apt install python3-venv)" \
    "$py" -m venv "$tool"
  run_or_die "$tool" "pip could not install sd-env from $bundle" "run \`sd-env bundle verify $bundle\` on a machine with sd-env" \
    env $(compgen -e | grep -E '^(PIP|UV)_' | sed 's/^/--unset=/') PIP_CONFIG_FILE=/dev/null \
      PIP_DISABLE_PIP_VERSION_CHECK=1 "$tool/bin/python" -m pip install -q --no-index --no-deps \
      --only-binary :all: --require-hashes -r "$scratch/tool-requirements.txt"
  echo "$stamp" > "$tool/.sd-env-stamp"
}

# tool_requirements PY BUNDLE INDEX OUT: writes OUT, a requirements file of the tool wheels the
# index lists (absolute path and sha256 each), after hashing each; prints a stamp naming the set.
tool_requirements() {
  "$1" - "$2" "$3" "$4" <<'CHECK'
import hashlib, json, os, re, stat, sys
root, index, out = sys.argv[1:4]
doc = json.load(open(index))
members = {m["path"]: m for m in doc["members"]}
wheels = doc.get("tool") or []
if not wheels:
    sys.exit("error: the index lists no wheels for sd-env's own venv (a bundle from an older sd-env?)")
lines = []
for rel in wheels:
    m = members.get(rel)
    if not re.fullmatch(r"(tool|packages)/[A-Za-z0-9._+-]+\.whl", rel) or m is None or m["kind"] not in ("tool", "package"):
        sys.exit(f"error: the tool wheel {rel!r} is not a listed tool/ or packages/ wheel")
    here = root
    for part in rel.split("/"):
        here = os.path.join(here, part)
        if not os.path.lexists(here) or stat.S_ISLNK(os.lstat(here).st_mode):
            sys.exit(f"error: bundle member {rel} is missing or a symbolic link")
    digest = hashlib.sha256()
    with open(here, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != m["sha256"]:
        sys.exit(f"error: bundle member {rel} does not match the index")
    lines.append(f"{os.path.abspath(here)} --hash=sha256:{m['sha256']}\n")
open(out, "w").write("".join(lines))
print("bundle-" + hashlib.sha256("".join(sorted(lines)).replace(root, "").encode()).hexdigest()[:16])
CHECK
}
