#!/usr/bin/env bash
# deploy/image/build.sh BUNDLE --base IMAGE [--expect ID] [--tag TAG] [--engine podman|docker] [--no-space-check]
#
# Builds the OCI image of an sd-env bundle (`sd-env bundle create`) with no network during the
# build: the bundle folder is the build context, its own bootstrap.sh installs the environment
# into /opt/sd-env, and `sd-env verify --quick` is the image's health check (Containerfile).
# BASE must already be on this machine (a local Debian rootfs: deploy/image/make-base.sh; or one
# of Sophgo's images, pulled or loaded beforehand); nothing is pulled.
# TAG defaults to sd-env:MANIFEST_NAME; ENGINE to podman when installed, else docker.
# --expect ID: the bundle id `sd-env bundle create` printed; any other bundle is refused before the
# build (without it the build says the bundle is unanchored). The install inside checks it again.
# Before building it checks that the engine's storage has room: 8 times the bundle's size plus 1 GiB
# (--no-space-check skips that).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

. "$here/engine.sh"
usage="usage: deploy/image/build.sh BUNDLE --base IMAGE [--expect ID] [--tag TAG] [--engine podman|docker] [--no-space-check]"

bundle="" base="" tag="" engine="" expect="" space_check=1
while [ $# -gt 0 ]; do
  case $1 in
    --base|--tag|--engine|--expect)
      [ $# -ge 2 ] || die "$1 needs a value" "$usage"
      case $1 in --base) base=$2 ;; --tag) tag=$2 ;; --engine) engine=$2 ;; --expect) expect=${2#sha256:} ;; esac
      shift 2 ;;
    --expect=*) expect=${1#--expect=}; expect=${expect#sha256:}; shift ;;
    --base=*) base=${1#--base=}; shift ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    --engine=*) engine=${1#--engine=}; shift ;;
    --no-space-check) space_check=0; shift ;;
    -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) die "unknown option $1" "$usage" ;;
    *) [ -z "$bundle" ] || die "one bundle only (got $bundle and $1)" "$usage"; bundle=$1; shift ;;
  esac
done

[ -n "$bundle" ] || die "no bundle given" "$usage; make one with \`sd-env bundle create OUT\`"
[ -d "$bundle" ] || die "$bundle is not a folder" "pass the folder made by \`sd-env bundle create OUT\`"
[ -f "$bundle/index.json" ] || die "$bundle is not an sd-env bundle (no index.json)" \
  "pass the folder made by \`sd-env bundle create OUT\`"
[ -f "$bundle/bootstrap.sh" ] || die "$bundle has no bootstrap.sh: it was made by an older sd-env" \
  "re-create it with this sd-env: sd-env bundle create OUT"
[ -n "$base" ] || die "no base image given" \
  "pass --base IMAGE: a local Debian rootfs (deploy/image/make-base.sh sd-env-base:bullseye) or one of Sophgo's images"

engine=$(pick_engine "$engine")
if [ "$engine" = docker ]; then
  # RUN --mount needs BuildKit: built into clients before 23, through the buildx plugin since.
  client=$(docker version --format '{{.Client.Version}}' 2>/dev/null || true)
  case $client in
    1[0-9].*|2[0-2].*) ;;
    *) docker buildx version >/dev/null 2>&1 || die "docker ${client:-?} builds with BuildKit only through its buildx plugin, which is missing" \
         "install the buildx plugin (Docker's docker-buildx-plugin package), use Debian's docker.io client (/usr/bin/docker, 20.10), or use --engine podman" ;;
  esac
  docker info >/dev/null 2>&1 || die "the docker daemon is not reachable" \
    "start it (sudo systemctl start docker), or use --engine podman"
fi

if ! "$engine" image inspect "$base" >/dev/null 2>&1; then
  die "base image $base is not on this machine (nothing is pulled: the build has no network)" \
    "make one: sudo deploy/image/make-base.sh $base --engine $engine; or \`$engine pull\`/\`$engine load\` one of Sophgo's images first"
fi

# Room in the engine's storage. The RUN writes the environment, then the commit writes it twice
# more (the layer's tar, then the new layer) while the container's copy still exists: with podman,
# the default manifest's 2.8 GB bundle (5.1 GB of unpacked wheels) peaked at 20.2 to 21.2 GB
# (bench/image_bench.py). Asked for: 8 times the bundle, plus 1 GiB.
store=$(storage_root "$engine")
bundle_bytes=$(du -sb "$bundle" | cut -f1)
need=$(( bundle_bytes * 8 + 1073741824 ))
free=$(free_bytes "$store")
if [ "$space_check" = 1 ] && [ "$free" -lt "$need" ]; then
  die "not enough free space for the build in $store: about $(numfmt --to=si --suffix=B "$need") needed (8 times the bundle plus 1 GiB), $(numfmt --to=si --suffix=B "$free") free" \
    "free some space there (\`$engine system prune\`), or move the engine's storage to a larger disk; --no-space-check builds anyway" 3
fi

name=$(sed -n 's/^ *"manifest_name": *"\([^"]*\)".*/\1/p' "$bundle/index.json" | head -n 1)
[ -n "$tag" ] || tag=sd-env:${name:-latest}

# podman keeps HEALTHCHECK only in the docker image format; docker needs BuildKit for RUN --mount.
index=$(sha256sum "$bundle/index.json" | cut -c1-64)
if [ -n "$expect" ]; then
  [ "$index" = "$expect" ] || die "$bundle is bundle $index, not the expected $expect: refused, nothing was built" \
    "get the bundle (or the id) again from whoever made it" 1
else
  say "WARNING: bundle $index is UNANCHORED: nothing outside it vouches for it (pass --expect ID)"
fi
flags=(--network=none --build-arg "BASE=$base" --build-arg "BUNDLE_INDEX=$index" -f "$here/Containerfile" -t "$tag")
if [ "$engine" = podman ]; then
  flags+=(--format docker)
else
  export DOCKER_BUILDKIT=1
fi
say "building $tag with $engine from the bundle $bundle ($(numfmt --to=si --suffix=B "$bundle_bytes"), manifest ${name:-?}) on $base, network off"
say "storage: $store, $(numfmt --to=si --suffix=B "$free") free (about $(numfmt --to=si --suffix=B "$need") needed)"
start=$(date +%s)
# The engine's output goes where it always goes, and into a log too: a full disk shows up on
# stdout (a RUN step's own error) or on stderr (the commit), and gets its own message.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { { "$engine" build "${flags[@]}" "$bundle" | tee -a "$log"; } 2>&1 1>&3 | tee -a "$log" >&2; } 3>&1; then
  if grep -qiE "no space left on device|disk quota exceeded" "$log"; then
    die "$engine build ran out of disk space (see above): $(numfmt --to=si --suffix=B "$(free_bytes "$store")") free now in $store" \
      "the build needs about $(numfmt --to=si --suffix=B "$need") there; free some space (\`$engine system prune\`) or move the engine's storage" 3
  fi
  die "$engine build failed (see above)" \
    "check the bundle: sd-env bundle verify $bundle; the base needs bash, git and the manifest's Python with venv" 1
fi
bytes=$("$engine" image inspect --format '{{.Size}}' "$tag")
say "built $tag in $(( $(date +%s) - start )) s: $(numfmt --to=si --suffix=B "$bytes") ($bytes bytes)"
say "run it: $engine run --rm --network none $tag sd-env verify --quick (add --device /dev/bmdev-ctl --device /dev/bm-sophon0 on a card's host)"
