# driver-plan.sh DEB...: prints each DEB whose package is not installed at the DEB's version.
# Run by the role on each host (sh -c); the files are the operator's, never a network source.
# Installed means dpkg's status "WANT ok installed" at that version, whatever WANT is: a package
# the operator put on hold ("hold ok installed") is installed, not a reason to install it again.
set -eu
for deb in "$@"; do
  pkg=$(dpkg-deb -f "$deb" Package)
  ver=$(dpkg-deb -f "$deb" Version)
  have=$(dpkg-query -W -f '${Status} ${Version}' "$pkg" 2>/dev/null || true)
  want=${have%% *}
  [ -n "$want" ] && [ "${have#"$want" }" = "ok installed $ver" ] || printf '%s\n' "$deb"
done
