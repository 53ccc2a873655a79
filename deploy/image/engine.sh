# Sourced by build.sh and make-base.sh: messages, and the container engine to use.

say() { printf '* %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$1" >&2; [ -n "${2:-}" ] && printf 'hint: %s\n' "$2" >&2; exit "${3:-2}"; }

# pick_engine [ENGINE]: prints ENGINE (podman or docker), else podman when installed, else
# docker; dies when it is unknown or not installed.
pick_engine() {
  local engine=${1:-}
  if [ -z "$engine" ]; then
    if command -v podman >/dev/null; then engine=podman
    elif command -v docker >/dev/null; then engine=docker
    else die "neither podman nor docker is installed" "install one: sudo apt install podman (or docker.io)"
    fi
  fi
  case $engine in
    podman|docker) command -v "$engine" >/dev/null \
      || die "$engine is not installed" "install it: sudo apt install $engine, or pass --engine" ;;
    *) die "unknown engine $engine" "pass --engine podman or --engine docker" ;;
  esac
  printf '%s\n' "$engine"
}

# storage_root ENGINE: the folder where the engine keeps its images and layers.
storage_root() {
  case $1 in
    podman) podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage ;;
    docker) docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker ;;
  esac
}

# free_bytes PATH: the bytes free on the filesystem that holds PATH (or its nearest existing parent).
free_bytes() {
  local path=$1
  while [ ! -e "$path" ]; do path=$(dirname "$path"); done
  df -B1 --output=avail "$path" | tail -n 1 | tr -d ' '
}
