# Sourced by bootstrap.sh and scripts/test.sh: find_python MIN_MINOR [EXACT]
# prints the path of a CPython 3.MIN_MINOR+ (or exactly 3.EXACT when given).
# Order: $SD_ENV_PYTHON, python3.9 on PATH, pyenv's 3.9, conda's, python3.
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
