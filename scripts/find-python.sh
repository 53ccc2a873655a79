# Sourced by bootstrap.sh and scripts/test.sh: finding a Python, and getting one without root.
#
# find_python MIN_MINOR [EXACT] prints the path of a CPython 3.MIN_MINOR+ (or exactly 3.EXACT when
# given). Order: $SD_ENV_PYTHON, python3.9 on PATH, pyenv's 3.9, conda's, python3.
#
# When there is none: managed_python HOME X.Y finds a standalone CPython X.Y already under
# HOME/python, and install_python X.Y HOME MIRROR INDEX puts one there with uv (`uv python
# install`, python-build-standalone's relocatable build; --no-bin: nothing outside HOME/python
# changes). uv is taken from the PATH, HOME/tool or HOME/bin, else fetched as its wheel from the
# package index (fetch_uv): a machine with no Python at all needs only bash, coreutils, sed,
# grep, gzip and curl or wget for that. sd-env's own Python code does the same (pythons.py).
find_python() {
  local min=$1 exact=${2:-}
  local candidates=()
  [ -n "${SD_ENV_PYTHON:-}" ] && candidates+=("$SD_ENV_PYTHON")
  candidates+=("$(command -v python3.9 || true)")
  if command -v pyenv >/dev/null 2>&1; then
    local root; root=$(pyenv root)
    candidates+=($(ls -d "$root"/versions/3.9*/bin/python 2>/dev/null | sort -V -r))
  fi
  [ -n "${CONDA_PREFIX:-}" ] && candidates+=("$CONDA_PREFIX/bin/python")
  candidates+=("$(command -v python3 || true)" "$(command -v python || true)")
  local py minor
  for py in "${candidates[@]}"; do
    [ -n "$py" ] && [ -x "$py" ] || continue
    minor=$("$py" -c 'import sys; print(sys.version_info[1] if sys.version_info[0] == 3 else -1)' 2>/dev/null) || continue
    if [ -n "$exact" ]; then [ "$minor" = "$exact" ] || continue; fi
    [ "$minor" -ge "$min" ] 2>/dev/null || continue
    echo "$py"
    return 0
  done
  return 1
}

_note() { printf '* %s\n' "$*" >&2; }

# managed_python HOME X.Y: the newest standalone CPython X.Y under HOME/python that runs.
managed_python() {
  local home=$1 want=$2 py
  for py in $(ls -d "$home/python/cpython-$want".*/bin/"python$want" 2>/dev/null | sort -V -r); do
    [ -L "${py%/bin/*}" ] && continue  # uv's cpython-X.Y-... link to the newest patch: the real folder is listed too
    "$py" -c '' 2>/dev/null && { echo "$py"; return 0; }
  done
  return 1
}

# stack_version ROOT ARGS...: the Python version (X.Y) of the manifest bootstrap installs: -m PATH or
# -m STACKNAME among ARGS, else $SD_ENV_MANIFEST, else ROOT/manifests/sc7-sd14-lora.toml.
stack_version() {
  local root=$1 named="" prev="" arg path
  shift
  for arg in "$@"; do
    case $prev in -m|--manifest) named=$arg ;; esac
    case $arg in --manifest=*) named=${arg#--manifest=} ;; esac
    prev=$arg
  done
  named=${named:-${SD_ENV_MANIFEST:-$root/manifests/sc7-sd14-lora.toml}}
  for path in "$named" "$root/manifests/$named.toml" "$root/manifests/$named"; do
    [ -f "$path" ] || continue
    sed -n 's/^python *= *"\(3\.[0-9][0-9]*\)".*/\1/p' "$path" | head -n 1
    return 0
  done
  echo 3.9
}

# config_value KEY ROOT: KEY = "VALUE" from ROOT/sd-env.toml, else from the user's sd-env config
# (config.py's order after flags and environment); a relative path is taken from the file's folder.
config_value() {
  local key=$1 root=$2 file value
  for file in "$root/sd-env.toml" "${XDG_CONFIG_HOME:-$HOME/.config}/sd-env/config.toml"; do
    [ -f "$file" ] || continue
    value=$(sed -n "s/^[[:space:]]*$key[[:space:]]*=[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$file" | head -n 1)
    [ -n "$value" ] || continue
    case $value in *://*|/*) ;; *) value="$(cd "$(dirname "$file")" && pwd)/$value" ;; esac
    printf '%s\n' "$value"
    return 0
  done
  return 1
}

# python_mirror ROOT ARGS...: --python-mirror among ARGS, else $UV_PYTHON_INSTALL_MIRROR, else
# python-mirror from the config files; a folder becomes a file:// URL (uv takes URLs only).
python_mirror() {
  local root=$1 prev="" arg value=""
  shift
  for arg in "$@"; do
    case $prev in --python-mirror) value=$arg ;; esac
    case $arg in --python-mirror=*) value=${arg#--python-mirror=} ;; esac
    prev=$arg
  done
  value=${value:-${UV_PYTHON_INSTALL_MIRROR:-$(config_value python-mirror "$root" || true)}}
  case $value in ""|*://*) ;; *) value="file://$(realpath -m "$value")" ;; esac
  printf '%s\n' "$value"
}

# package_index ROOT: the simple index uv's wheel comes from: $PIP_INDEX_URL, $UV_DEFAULT_INDEX,
# index-url in sd-env's config files, pip.conf's index-url, else PyPI.
package_index() {
  local root=$1 file value
  value=${PIP_INDEX_URL:-${UV_DEFAULT_INDEX:-${UV_INDEX_URL:-$(config_value index-url "$root" || true)}}}
  if [ -z "$value" ]; then
    for file in "${PIP_CONFIG_FILE:-}" "${XDG_CONFIG_HOME:-$HOME/.config}/pip/pip.conf" "$HOME/.pip/pip.conf" /etc/pip.conf; do
      [ -n "$file" ] && [ -f "$file" ] || continue
      value=$(sed -n 's/^[[:space:]]*index-url[[:space:]]*=[[:space:]]*\([^[:space:]]*\).*/\1/p' "$file" | head -n 1)
      [ -z "$value" ] || break
    done
  fi
  printf '%s\n' "${value:-https://pypi.org/simple}"
}

# http_get URL OUT: curl, else wget (both follow redirects; a failure is a non-zero exit).
http_get() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 2 --connect-timeout 20 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget -q --tries=3 --timeout=20 -O "$2" "$1"
  else
    _note "neither curl nor wget is installed: cannot download $1"
    return 1
  fi
}

# _le FILE OFFSET BYTES: an unsigned little-endian integer read from FILE.
_le() { od -An -tu"$3" --endian=little -j "$2" -N "$3" "$1" | tr -d ' \n'; }

# zip_member ZIP GLOB OUT: the first member of ZIP whose name matches GLOB, written to OUT. A wheel
# is a zip file: a deflated member is the body of a gzip stream, so gzip (which checks the CRC-32
# the zip directory gives) unpacks it; no unzip and no Python needed. ZIP64 and comments: refused.
zip_member() {
  local zip=$1 want=$2 out=$3 size eocd entries cd i method csize nlen xlen clen offset name data
  size=$(stat -c %s "$zip")
  eocd=$((size - 22))
  [ "$eocd" -ge 0 ] && [ "$(_le "$zip" "$eocd" 4)" = 101010256 ] || return 1  # PK\5\6, no comment
  entries=$(_le "$zip" $((eocd + 10)) 2)
  cd=$(_le "$zip" $((eocd + 16)) 4)
  for ((i = 0; i < entries; i++)); do
    [ "$(_le "$zip" "$cd" 4)" = 33639248 ] || return 1  # PK\1\2: a central directory entry
    method=$(_le "$zip" $((cd + 10)) 2)
    csize=$(_le "$zip" $((cd + 20)) 4)
    nlen=$(_le "$zip" $((cd + 28)) 2)
    xlen=$(_le "$zip" $((cd + 30)) 2)
    clen=$(_le "$zip" $((cd + 32)) 2)
    offset=$(_le "$zip" $((cd + 42)) 4)
    name=$(tail -c +$((cd + 47)) "$zip" | head -c "$nlen")
    # shellcheck disable=SC2053  # GLOB is a pattern
    if [[ $name == $want ]]; then
      [ "$csize" != 4294967295 ] || return 1
      data=$((offset + 30 + $(_le "$zip" $((offset + 26)) 2) + $(_le "$zip" $((offset + 28)) 2)))
      case $method in
        0) tail -c +$((data + 1)) "$zip" | head -c "$csize" > "$out" ;;
        8) { printf '\037\213\010\000\000\000\000\000\000\377'
             tail -c +$((data + 1)) "$zip" | head -c "$csize"
             tail -c +$((cd + 17)) "$zip" | head -c 4  # CRC-32
             tail -c +$((cd + 25)) "$zip" | head -c 4  # uncompressed size
           } | gzip -dc > "$out" ;;
        *) return 1 ;;
      esac
      return
    fi
    cd=$((cd + 46 + nlen + xlen + clen))
  done
  return 1
}

# fetch_uv ROOT DEST: uv's static binary at DEST/uv, from the newest uv wheel for this machine on the
# package index (package_index ROOT), checked against the sha256 the index gives. Prints its path.
fetch_uv() {
  local root=$1 dest=$2 index page arch href best url sha tmp
  index=$(package_index "$root")
  arch=$(uname -m)
  tmp=$(mktemp -d)
  page="${index%/}/uv/"
  if ! http_get "$page" "$tmp/index.html"; then
    _note "cannot read $page (set the package index: PIP_INDEX_URL, or index-url in sd-env.toml)"
    rm -rf "$tmp"; return 1
  fi
  best=$(grep -o 'href="[^"]*"' "$tmp/index.html" | sed 's/^href="//; s/"$//; s/&amp;/\&/g' \
    | grep -E "(^|/)uv-[0-9]+\.[0-9]+\.[0-9]+-py3-none-[^/#]*manylinux[^/#]*_${arch}[^/#]*\.whl(#|$)" \
    | sed -E 's|^(.*/)?uv-([0-9.]+)-|\2 &|' | sort -V -k1,1 | tail -n 1 | cut -d' ' -f2-)
  if [ -z "$best" ]; then
    _note "$page lists no uv wheel for $arch Linux (manylinux)"
    rm -rf "$tmp"; return 1
  fi
  href=${best%%#*}
  sha=$(printf '%s\n' "$best" | sed -n 's/.*#sha256=\([0-9a-f]\{64\}\).*/\1/p')
  case $href in
    *://*) url=$href ;;
    /*) url=$(printf '%s\n' "$page" | sed -E 's|^([a-z+]+://[^/]*).*|\1|')$href ;;
    *) url=$page$href ;;
  esac
  _note "getting uv (${href##*/}) from $index, to install a standalone Python"
  if ! http_get "$url" "$tmp/uv.whl"; then
    _note "could not download $url"; rm -rf "$tmp"; return 1
  fi
  if [ -n "$sha" ]; then
    [ "$(sha256sum "$tmp/uv.whl" | cut -d' ' -f1)" = "$sha" ] || {
      _note "${href##*/} does not have the sha256 the index gives: not used"; rm -rf "$tmp"; return 1; }
  else
    _note "WARNING: $index gives no sha256 for ${href##*/}: it is used unchecked"
  fi
  mkdir -p "$dest"
  if ! zip_member "$tmp/uv.whl" 'uv-*.data/scripts/uv' "$dest/uv.partial"; then
    _note "could not unpack uv from ${href##*/}"; rm -rf "$tmp" "$dest/uv.partial"; return 1
  fi
  chmod 755 "$dest/uv.partial" && mv "$dest/uv.partial" "$dest/uv"
  rm -rf "$tmp"
  _note "uv is $dest/uv ($("$dest/uv" --version 2>/dev/null), $(du -h "$dest/uv" | cut -f1))"
  echo "$dest/uv"
}

# install_python X.Y HOME ROOT MIRROR: a standalone CPython X.Y in HOME/python by `uv python install`
# (from MIRROR when given, else uv's default source); prints the interpreter's path.
install_python() {
  local want=$1 home=$2 root=$3 mirror=$4 uv py
  uv=$(command -v uv || true)
  [ -n "$uv" ] || { [ -x "$home/tool/bin/uv" ] && uv=$home/tool/bin/uv; } || true
  [ -n "$uv" ] || { [ -x "$home/bin/uv" ] && uv=$home/bin/uv; } || true
  [ -n "$uv" ] || uv=$(fetch_uv "$root" "$home/bin") || return 1
  _note "no Python $want here: installing a standalone CPython $want with uv into $home/python" \
        "(from ${mirror:-uv default source}; no root needed, nothing outside that folder changes)"
  env ${mirror:+"UV_PYTHON_INSTALL_MIRROR=$mirror"} "$uv" python install "$want" --install-dir "$home/python" \
    --no-bin >&2 || return 1
  py=$(managed_python "$home" "$want") || return 1
  _note "Python $want is $py ($(du -sh "${py%/bin/*}" | cut -f1) on disk)"
  echo "$py"
}

# python_hint: the mirror setting, for when install_python could not reach uv's default source.
python_hint() {
  printf '%s' "point uv at a mirror of the standalone Python builds: python-mirror = \"URL\" in sd-env.toml" \
    " or ~/.config/sd-env/config.toml (or UV_PYTHON_INSTALL_MIRROR=URL, or --python-mirror URL), and run again"
}
