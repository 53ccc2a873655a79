#!/usr/bin/env bash
# scripts/test-as-user.sh [USER] [PYTEST ARGS...]: the test command (scripts/test.sh) run by an ordinary
# user, USER (default sdtest), made with useradd when missing. Run it as root: it hands the user what only
# root has here, the way a user without root would get it:
# - Python 3.9 (and 3.10, 3.11): root packs its own (pyenv's) as standalone builds into a mirror
#   (tests/kit/pythonkit.py), and the user's uv installs from it (UV_PYTHON_INSTALL_MIRROR and
#   UV_PYTHON_DOWNLOADS_JSON_URL), as a user points uv at a mirror when the default source is out of reach;
# - the checkout and the shared git mirrors: copied into the user's home (root's folders may be closed);
# - the accelerate sdists root's run downloaded, when there (a cache, as a user would have it).
# The user has no sudo and no pyenv; the environment is a login's (HOME, PATH=/usr/local/bin:/usr/bin:/bin,
# the CA bundle), nothing else of root's. PYTEST ARGS default to -m "not slow" (the quick part).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "error: run as root: it creates the user and hands over what only root has" >&2; exit 2; }
user=${1:-sdtest}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- -m "not slow"
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
work=$home/sd-env-ci
rm -rf "$work"
mkdir -p "$work/repo" "$work/shared"
tar --exclude=./.venv --exclude=./.sd-env --exclude=./.pytest_cache --exclude='__pycache__' -cf - . | tar -xf - -C "$work/repo"
for base in .. ../..; do  # tests/conftest.py looks for shared/mirrors beside the checkout or a parent
  if [ -d "$base/shared/mirrors" ]; then cp -r "$base/shared/mirrors" "$work/shared/mirrors"; break; fi
done
# The accelerate sdists the ladder tests read (15 MB, 25 releases), as root's run downloaded them: saves
# the user about 3.5 minutes of PyPI downloads (the tests check each sdist's release as before).
cache=${SD_ENV_TEST_CACHE:-$HOME/.cache/sd-env-tests}/sdists
if [ -d "$cache" ]; then
  mkdir -p "$home/.cache/sd-env-tests"
  rm -rf "$home/.cache/sd-env-tests/sdists"
  cp -r "$cache" "$home/.cache/sd-env-tests/sdists"
  chown -R "$user": "$home/.cache"
fi
. scripts/find-python.sh
py=$(find_python 9 9 || find_python 9)
"$py" tests/kit/pythonkit.py "$work/standalone" > "$work/standalone.env"
chown -R "$user": "$work"
chmod -R u+w "$work"
echo "* running ./scripts/test.sh $* as $user (uid $(id -u "$user"), no root) in $work/repo"
mapfile -t mirror < "$work/standalone.env"
exec runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin \
  LANG=C.UTF-8 ${SSL_CERT_FILE:+"SSL_CERT_FILE=$SSL_CERT_FILE"} ${CI:+"CI=$CI"} "${mirror[@]}" \
  bash -c 'cd "$1" && shift && exec ./scripts/test.sh "$@"' bash "$work/repo" "$@"
