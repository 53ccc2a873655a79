#!/usr/bin/env bash
# ./bootstrap.sh [--link] [--no-verify] [--json] [sd-env install flags...]
#
# --link: also make ~/.local/bin/sd-env a link to sd-env (shell profiles are
# never edited; you are told when ~/.local/bin is not on your PATH).
# --no-verify: stop after the install (a caller that runs its own `sd-env verify`).
# --json: stdout is exactly one JSON document, `sd-env install --json`'s (its
# "changed" says whether anything was done); everything else goes to stderr.
# Every other flag goes to `sd-env install`: -m NAME (also what verify checks),
# --git-mirror PREFIX (github.com/OWNER/NAME.git from PREFIX/OWNER/NAME.git; without
# GitHub, diffusers otherwise comes from its sdist, which has no training script),
# --python, --torch-tpu-wheel, --bundle, ...
#
# On a fresh machine: finds a Python >= 3.9 for sd-env itself, installs sd-env
# into its own venv (.sd-env/tool), then runs `sd-env install` (which finds or
# creates the Python 3.9 target environment, .sd-env/venv by default) and
# `sd-env verify`. Needs bash, git and some Python >= 3.9; without one, it installs a
# standalone CPython of the stack's version into $SD_ENV_HOME/python with uv (fetched from the
# package index when there is no Python at all: then curl or wget, sed, grep, gzip and
# coreutils suffice), from --python-mirror / UV_PYTHON_INSTALL_MIRROR / python-mirror in
# sd-env.toml when given. Re-running on a finished machine changes nothing and takes seconds.
#
# ./bootstrap.sh --bundle OUT [--expect ID] [--allowed-signers FILE]: no network at
# all. The bundle's index is checked first against the id (or the signature) given,
# then sd-env comes from exactly the wheels the index lists for it, by hash
# (scripts/bundle-tool.sh), with the Python version the bundle was made for; then
# `sd-env install --bundle OUT` (with the same flags) checks every member again. A
# bundle carries this script: OUT/bootstrap.sh installs from OUT itself, into
# $SD_ENV_HOME (default: .sd-env in the current folder). A host without the bundle's Python version
# gets the standalone Python the bundle carries: then bash, coreutils, sed, grep, gzip, tar and git suffice.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/scripts/find-python.sh"
. "$here/scripts/bundle-tool.sh"

say() { printf '* %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2; exit "${3:-2}"; }

link=0
verify=1
json=0
args=()
for arg in "$@"; do
  case $arg in
    --link) link=1 ;;
    --no-verify) verify=0 ;;
    --json) json=1; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done

# Inside a bundle (its index.json beside this script), the bundle is the source.
if [ -f "$here/index.json" ]; then
  home=${SD_ENV_HOME:-$PWD/.sd-env}
  [ -n "$(bundle_arg "$@")" ] || args+=(--bundle "$here")
else
  home=${SD_ENV_HOME:-$here/.sd-env}
fi
tool=$home/tool
bundle=$(bundle_arg ${args[@]+"${args[@]}"})

command -v git >/dev/null || die "git is not installed" "install it: sudo apt install git (or: conda install git)"
scratch=""
if [ -n "$bundle" ]; then
  [ -d "$bundle" ] || die "--bundle $bundle: no such folder" "pass the folder made by \`sd-env bundle create\`"
  bundle=$(cd "$bundle" && pwd -P)
  # The home is never inside the bundle (bundle verify would find the home's files unlisted).
  case "$(realpath -m "$home")/" in
    "$bundle"/*) die "the install folder $home is inside the bundle $bundle" \
                     "run from another folder, or set SD_ENV_HOME to a folder outside the bundle" ;;
  esac
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  index=$(bundle_anchor "$bundle" "$(flag_arg --expect ${args[@]+"${args[@]}"})" \
    "$(flag_arg --allowed-signers ${args[@]+"${args[@]}"})" "$scratch")
  # sd-env's own wheels in the bundle were downloaded for the bundle's Python: use that version.
  want=$(bundle_python "$index")
  [ -n "$want" ] || die "the bundle's index names no Python version" "re-create the bundle with this sd-env" 1
  # None of the host's own: the one under the home, else the bundle's standalone Python (unpacked; no network).
  py=$(find_python "${want#3.}" "${want#3.}") || py=$(managed_python "$home" "$want") \
    || py=$(bundle_interpreter "$bundle" "$index" "$home" "$scratch" "$want") \
    || die "no Python $want to run sd-env from this bundle" \
    "its wheels are for Python $want: install it (conda create -n sd python=$want; or pyenv install $want) and pass SD_ENV_PYTHON=/path/to/python$want"
else
  # None on the machine: a standalone CPython of the stack's version under the home, with uv (fetched from
  # the package index when there is no Python at all), which `sd-env install` then also uses for the target.
  want=$(stack_version "$here" ${args[@]+"${args[@]}"})
  py=$(find_python 9) || py=$(managed_python "$home" "$want") \
    || py=$(install_python "$want" "$home" "$here" "$(python_mirror "$here" ${args[@]+"${args[@]}"})") \
    || die "no Python >= 3.9 to run sd-env" \
    "install one: sudo apt install python3 python3-venv; or conda create -n sd python=$want; or pyenv install $want; or $(python_hint)"
fi

# --json: fd 3 is the real stdout, for install's JSON document only; all else goes to stderr.
exec 3>&1
[ "$json" = 0 ] || exec 1>&2

verify_args=()
# The tool venv is (re)built only when missing or when pyproject.toml changed
# (sd-env is installed editable, so code changes need no reinstall).
if [ -n "$bundle" ]; then
  bundle_tool "$py" "$bundle" "$tool" "$index" "$scratch"
  verify_args=(-m "$(bundle_manifest "$py" "$bundle" "$index")")  # verify reads the manifest the bundle installed
elif stamp=$(sha256sum "$here/pyproject.toml" | cut -c1-16) \
    && { [ ! -x "$tool/bin/sd-env" ] || [ "$(cat "$tool/.sd-env-stamp" 2>/dev/null)" != "$stamp" ]; }; then
  say "installing sd-env into $tool (with $py)"
  rm -rf "$tool"
  run_or_die "$tool" "could not create the venv $tool" "$py needs its venv module (Debian: sudo apt install python3-venv)" \
    "$py" -m venv "$tool"
  run_or_die "$tool" "pip could not install sd-env's dependencies" \
    "check the package index (PIP_INDEX_URL or pip.conf, e.g. a PyPI mirror) and run again" \
    "$tool/bin/python" -m pip install -q --disable-pip-version-check -e "$here"
  # uv makes the 2.8 GB lock install about 4x faster; pip is used without it.
  "$tool/bin/python" -m pip install -q --disable-pip-version-check uv \
    || say "uv could not be installed; sd-env will use pip (slower)"
  echo "$stamp" > "$tool/.sd-env-stamp"
else
  say "sd-env is installed in $tool"
fi

export SD_ENV_HOME="$home"
# -m/--manifest (a path or a shipped stack's name) also chooses what verify checks below.
prev=""
for arg in ${args[@]+"${args[@]}"}; do
  case "$prev" in -m|--manifest) export SD_ENV_MANIFEST="$arg" ;; esac
  case "$arg" in --manifest=*) export SD_ENV_MANIFEST="${arg#--manifest=}" ;; esac
  prev="$arg"
done
"$tool/bin/sd-env" install ${args[@]+"${args[@]}"} >&3

# The full verify (a LoRA training step, about 30 s) runs whenever what is
# installed changed since the last full pass; otherwise the quick one does.
installed=$({ cat "$home/state.json" "$here"/manifests/* "$here"/patches/* 2>/dev/null || true; } \
  | sha256sum | cut -c1-16)
rc=0
if [ "$verify" = 0 ]; then
  say "not verifying (--no-verify): run \`sd-env verify\`"
elif [ "$(cat "$home/.verified" 2>/dev/null)" = "$installed" ]; then
  say "nothing changed since the last full verify: running verify --quick (sd-env verify runs all checks)"
  "$tool/bin/sd-env" verify --quick ${verify_args[@]+"${verify_args[@]}"} || rc=$?
else
  "$tool/bin/sd-env" verify ${verify_args[@]+"${verify_args[@]}"} || rc=$?
  [ "$rc" -ne 0 ] || echo "$installed" > "$home/.verified"
fi

# Where sd-env is, in one line; a link on the PATH only when asked for.
cmd=$tool/bin/sd-env
if [ "$link" = 1 ]; then
  bin=$HOME/.local/bin
  mkdir -p "$bin"
  if [ -e "$bin/sd-env" ] && [ ! -L "$bin/sd-env" ]; then
    die "$bin/sd-env exists and is not a link; not replacing it" "remove it, or run $cmd directly" 1
  fi
  ln -sfn "$cmd" "$bin/sd-env"
  say "linked $bin/sd-env -> $cmd"
  case ":$PATH:" in
    *":$bin:"*) cmd=sd-env ;;
    *) say "$bin is not on your PATH: add it in your shell profile (sd-env does not edit profiles)" ;;
  esac
fi
prefix=""
[ "$home" = "$here/.sd-env" ] || prefix="SD_ENV_HOME=$home "
hint=""
[ "$link" = 1 ] || hint=" (./bootstrap.sh --link puts it on your PATH)"
# The last lines say what `train` still lacks (diffusers from its sdist has no training script)
# and the command that fixes it, rather than suggest a train that fails at once.
if missing=$("$tool/bin/sd-env" train --check ${verify_args[@]+"${verify_args[@]}"} 2>&1 >/dev/null); then
  say "sd-env is $tool/bin/sd-env$hint: \`$prefix$cmd shell\` enters the environment, \`$prefix$cmd train --model DIR --data DIR\` trains a LoRA"
else
  say "sd-env is $tool/bin/sd-env$hint: \`$prefix$cmd shell\` enters the environment"
  while IFS= read -r line; do  # sd-env's error and hint, its commands as this home needs them
    case $line in
      "error: "*) say "NOT ready to train: ${line#error: }" ;;
      "hint: "*) line=${line#hint: }; say "fix: ${line//\`sd-env /\`$prefix$cmd }" ;;
    esac
  done <<< "$missing"
fi
exit "$rc"
