# Sourced by bootstrap.sh for `./bootstrap.sh --bundle OUT`: sd-env's own venv from
# the bundle's wheels, with no network. Defines bundle_arg, bundle_manifest, bundle_tool,
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

# bundle_arg ARGS...: prints the value of --bundle (or --bundle=) among ARGS, if any.
bundle_arg() {
  while [ $# -gt 0 ]; do
    case $1 in
      --bundle) printf '%s\n' "${2:-}"; return ;;
      --bundle=*) printf '%s\n' "${1#--bundle=}"; return ;;
    esac
    shift
  done
}

# bundle_manifest PY BUNDLE: the path of the bundle's own manifest copy.
bundle_manifest() {
  "$1" -c 'import json, sys; print(sys.argv[2] + "/" + json.load(open(sys.argv[1]))["manifest_path"])' \
    "$2/index.json" "$2"
}

# bundle_tool PY BUNDLE TOOL: (re)makes the venv TOOL with sd-env and uv from BUNDLE/tool and
# BUNDLE/packages, after checking those wheels against the index; pip's config files and
# every PIP_*/UV_* variable are ignored, so pip looks nowhere but the bundle.
bundle_tool() {
  local py=$1 bundle=$2 tool=$3 stamp
  [ -f "$bundle/index.json" ] || die "$bundle is not an sd-env bundle (no index.json)" \
    "pass the folder made by \`sd-env bundle create\`"
  stamp=bundle-$({ cat "$bundle"/tool/sd_env-*.whl 2>/dev/null || true; } | sha256sum | cut -c1-16)
  # Installed from this very sd-env wheel: no pip run, so no wheel to check here (the
  # install that follows checks the whole bundle anyway).
  if [ -x "$tool/bin/sd-env" ] && [ "$(cat "$tool/.sd-env-stamp" 2>/dev/null)" = "$stamp" ]; then
    say "sd-env is installed in $tool (from the bundle)"
    return
  fi
  "$py" - "$bundle" <<'CHECK' || die "the bundle's wheels do not match its index" "copy the bundle again" 1
import hashlib, json, sys
from pathlib import Path
root = Path(sys.argv[1])
for m in json.loads((root / "index.json").read_text())["members"]:
    if m["kind"] in ("tool", "package"):
        path = root / m["path"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != m["sha256"]:
            sys.exit(f"error: bundle member {m['path']} is missing or does not match the index")
CHECK
  say "installing sd-env into $tool from the bundle (no index, with $py)"
  rm -rf "$tool"
  run_or_die "$tool" "could not create the venv $tool" "$py needs its venv module (Debian: sudo apt install python3-venv)" \
    "$py" -m venv "$tool"
  run_or_die "$tool" "pip could not install sd-env from $bundle/tool" "run \`sd-env bundle verify $bundle\`" \
    env $(compgen -e | grep -E '^(PIP|UV)_' | sed 's/^/--unset=/') PIP_CONFIG_FILE=/dev/null \
      PIP_DISABLE_PIP_VERSION_CHECK=1 "$tool/bin/python" -m pip install -q --no-index \
      --find-links "$bundle/tool" --find-links "$bundle/packages" sd-env uv
  echo "$stamp" > "$tool/.sd-env-stamp"
}
