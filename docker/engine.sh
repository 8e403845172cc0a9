# Sourced by docker/build_image.sh and docker/compose.sh: the container engine and podman's settings, decided once.
#   ENGINE: docker when its daemon answers, else podman (unless set); CONTAINERS_CONF: the project's podman settings
#   (docker/podman/containers.conf: runc and explicit ulimits) unless set; the system's configuration is left alone.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/podman/containers.conf}"
if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    elif command -v podman >/dev/null; then ENGINE=podman
    else echo "taalm containers: neither a running Docker daemon nor podman found: install one (Debian: apt-get" \
              "install podman runc)" >&2; exit 2; fi
fi
command -v "$ENGINE" >/dev/null || { echo "taalm containers: ENGINE=$ENGINE is not on PATH" >&2; exit 2; }
