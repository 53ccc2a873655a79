#!/usr/bin/env bash
# deploy/image/make-base.sh TAG [--engine podman|docker] [--suite bullseye] [--mirror URL]
#
# Makes a local base image for deploy/image/build.sh where no registry is reachable: a minimal
# Debian rootfs (debootstrap --variant=minbase) with python3, python3-venv, git and
# ca-certificates, imported as TAG. Debian bullseye's Python is 3.9, the default manifest's.
# Needs root and debootstrap (sudo apt install debootstrap), and the Debian mirror (about a
# minute); the rootfs is made in a temporary folder and removed afterwards.
set -euo pipefail
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/engine.sh"
usage="usage: deploy/image/make-base.sh TAG [--engine podman|docker] [--suite bullseye] [--mirror URL]"

tag="" engine="" suite=bullseye mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
  case $1 in
    --engine|--suite|--mirror)
      [ $# -ge 2 ] || die "$1 needs a value" "$usage"
      case $1 in --engine) engine=$2 ;; --suite) suite=$2 ;; --mirror) mirror=$2 ;; esac
      shift 2 ;;
    -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) die "unknown option $1" "$usage" ;;
    *) [ -z "$tag" ] || die "one tag only (got $tag and $1)" "$usage"; tag=$1; shift ;;
  esac
done
[ -n "$tag" ] || die "no image tag given" "$usage (e.g. sd-env-base:bullseye)"
engine=$(pick_engine "$engine")
command -v debootstrap >/dev/null || die "debootstrap is not installed" "install it: sudo apt install debootstrap"
[ "$(id -u)" = 0 ] || die "debootstrap needs root" "run it with sudo"

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/sd-env-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
say "debootstrap $suite (minbase, python3 python3-venv git ca-certificates) from $mirror into $rootfs"
start=$(date +%s)
debootstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates "$suite" "$rootfs" "$mirror" \
  > "$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)" \
  "check that $mirror is reachable, or pass --mirror URL (a local Debian mirror)" 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
say "debootstrap took $(( $(date +%s) - start )) s; importing as $tag with $engine"
tar -C "$rootfs" -c . | "$engine" import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
say "base image $tag: $("$engine" image inspect --format '{{.Size}}' "$tag" | numfmt --to=si --suffix=B)"
