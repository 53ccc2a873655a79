#!/usr/bin/env bash
# The test command (README): makes .venv with Python 3.9 when there is one
# (the target's version; else any Python >= 3.9), installs sd-env with its
# test extras, and runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/find-python.sh
py=$(find_python 9 9 || find_python 9) || { echo "error: no Python >= 3.9 found" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
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
