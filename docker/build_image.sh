#!/usr/bin/env bash
# `make image`: build taalm_dist:latest from docker/Dockerfile, with one command on either kind of machine:
#  - a GPU/cluster node with Docker (or podman) and network: the Dockerfile's CUDA base, torch from PyPI (the
#    CUDA build), flash-attn;
#  - a machine like this project's CPU machines (podman, PyPI reachable, no image registry, no CUDA torch wanted):
#    a Debian bookworm base made here with debootstrap, the local CPU torch wheel served to the build, no flash-attn.
# Either way the host's CA bundle is given to pip as a build secret (networks whose TLS a proxy re-signs).
#
# Environment (all optional):
#   ENGINE=docker|podman    default: docker when its daemon answers, else podman
#   TAG=taalm_dist:latest   the image built
#   BASE_IMAGE=IMAGE        the base; default: the Dockerfile's CUDA_IMAGE when it can be pulled, else
#                           taalm_dist-base:bookworm (made with debootstrap when missing; needs root and debootstrap)
#   TORCH_WHEEL_DIR=DIR     where a torch==<pin> wheel is looked for when the base is not the CUDA one
#                           (default: the wheel folders pip is configured with, then /opt/wheels)
#   INSTALL_FLASH_ATTN=0|1  default: 1 on the CUDA base, 0 on the Debian base
#   CA_BUNDLE=FILE          default: /etc/ssl/certs/ca-certificates.crt when it exists
# Prints each step, the build's wall time and the image's size; exits non-zero with the reason on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/engine.sh

die() { echo "make image: $*" >&2; exit 2; }
arg_default() { sed -n "s/^ARG $1=\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" docker/Dockerfile; }

TAG="${TAG:-taalm_dist:latest}"

CUDA_IMAGE="$(arg_default CUDA_IMAGE)"
TORCH_VERSION="$(arg_default TORCH_VERSION)"
LOCAL_BASE=taalm_dist-base:bookworm
build_args=()

if [ -z "${BASE_IMAGE:-}" ]; then
    if "$ENGINE" image inspect "$CUDA_IMAGE" >/dev/null 2>&1 || timeout 600 "$ENGINE" pull "$CUDA_IMAGE" >/dev/null 2>&1; then
        BASE_IMAGE="$CUDA_IMAGE"
    else
        echo "make image: $CUDA_IMAGE cannot be pulled here: building on a local Debian base ($LOCAL_BASE)"
        BASE_IMAGE="$LOCAL_BASE"
    fi
fi

if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && ! "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || die "no $LOCAL_BASE and no debootstrap to make it (apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to make $LOCAL_BASE (or pass BASE_IMAGE=an image you have)"
    root="$(mktemp -d /var/tmp/taalm_dist-base.XXXXXX)"
    trap 'rm -rf "$root"' EXIT
    echo "make image: debootstrap bookworm (Debian's archive) -> $LOCAL_BASE"
    debootstrap --variant=minbase bookworm "$root/rootfs" http://deb.debian.org/debian >"$root/log" 2>&1 \
        || { tail -20 "$root/log" >&2; die "debootstrap failed (log above)"; }
    tar -C "$root/rootfs" -c . | "$ENGINE" import - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi
build_args+=(--build-arg "CUDA_IMAGE=$BASE_IMAGE")

server_pid=""
cleanup() { [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true; [ -z "${serve_dir:-}" ] || rm -rf "$serve_dir"; }
trap cleanup EXIT
if [ "$BASE_IMAGE" = "$CUDA_IMAGE" ]; then
    flash="${INSTALL_FLASH_ATTN:-1}"
else
    # Not the CUDA base: a CPU torch. A local wheel of the pinned version, served over loopback to the build
    # (built with the host's network); otherwise PyPI's CPU index.
    flash="${INSTALL_FLASH_ATTN:-0}"
    dirs="${TORCH_WHEEL_DIR:-$(pip config get global.find-links 2>/dev/null || true) /opt/wheels}"
    wheel=""
    for d in $dirs; do
        wheel="$(ls "$d"/torch-"$TORCH_VERSION"+cpu-*.whl 2>/dev/null | head -n 1 || true)"
        [ -z "$wheel" ] || break
    done
    if [ -n "$wheel" ]; then
        serve_dir="$(mktemp -d)"
        ln -s "$wheel" "$serve_dir/"
        # a fixed port when free: the URL is a build arg, and a new one each time would void the layer cache
        port="$(python3 -c 'import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 38517))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"
        python3 -m http.server --bind 127.0.0.1 --directory "$serve_dir" "$port" >/dev/null 2>&1 &
        server_pid=$!
        for _ in $(seq 50); do
            python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
            sleep 0.1
        done
        echo "make image: torch from the local wheel $wheel"
        build_args+=(--network host --build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$port/")
    else
        echo "make image: no local torch-$TORCH_VERSION+cpu wheel: torch from https://download.pytorch.org/whl/cpu"
        build_args+=(--build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
    fi
fi
build_args+=(--build-arg "INSTALL_FLASH_ATTN=$flash")

ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ ! -s "$ca" ] || build_args+=(--secret "id=ca_bundle,src=$ca")
[ "$ENGINE" != podman ] || build_args+=(--format docker)

echo "make image: $ENGINE build -t $TAG (base $BASE_IMAGE, flash-attn $flash)"
start=$(date +%s)
"$ENGINE" build -f docker/Dockerfile -t "$TAG" "${build_args[@]}" .
end=$(date +%s)
size="$("$ENGINE" image inspect "$TAG" --format '{{.Size}}')"
echo "make image: built $TAG in $((end - start)) s, $((size / 1000000)) MB ($ENGINE, base $BASE_IMAGE)"
