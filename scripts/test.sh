#!/usr/bin/env bash
# The test command (README): makes .venv with Python 3.9 (the target's version), installs sd-env
# with its test extras, and runs pytest. Extra arguments go to pytest.
#
# Without a Python 3.9 of the user's own, it gets one as bootstrap.sh does: a standalone CPython
# 3.9 under .sd-env/python by uv (from UV_PYTHON_INSTALL_MIRROR or python-mirror in sd-env.toml
# when set); only when that fails too does it take any Python >= 3.9, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/find-python.sh
if [ ! -x .venv/bin/python ]; then
  py=$(find_python 9 9) || py=$(managed_python "$PWD/.sd-env" 3.9) \
    || py=$(install_python 3.9 "$PWD/.sd-env" "$PWD" "$(python_mirror "$PWD")") \
    || { py=$(find_python 9) && echo "* no Python 3.9 and none could be installed: the tests run on $py" >&2; } \
    || { echo "error: no Python >= 3.9 found, and uv could not install 3.9" >&2; echo "hint: $(python_hint)" >&2; exit 2; }
  echo "* creating .venv with $py"
  scratch=$(mktemp -d)  # Python 3.9's ensurepip leaves its CA bundle in TMPDIR
  TMPDIR=$scratch "$py" -m venv .venv
  rm -rf "$scratch"
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"
echo "* ruff check, mypy"
.venv/bin/ruff check installer tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
