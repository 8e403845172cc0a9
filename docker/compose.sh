#!/usr/bin/env bash
# `make compose-up` and friends: docker compose (Docker with a running daemon) or podman-compose, run with
#   - TAALM_UID/TAALM_GID = the invoking user's (unless set), so the containers write ./runs and ./mlruns as them;
#   - ./runs and ./mlruns created first by that user (a missing bind-mount source would be made root-owned);
#   - podman's settings for this project's machines (docker/podman/containers.conf) unless CONTAINERS_CONF is set.
# Usage: docker/compose.sh [-f FILE]... COMPOSE-ARGS...   (no -f: docker/compose.yaml). Environment:
#   ENGINE=docker|podman (docker/engine.sh), COMPOSE_PROJECT_NAME, TAALM_DEMO_ARGS, TAALM_MLFLOW_PORT.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/engine.sh"
export TAALM_UID="${TAALM_UID:-$(id -u)}" TAALM_GID="${TAALM_GID:-$(id -g)}"

files=()
while [ "${1:-}" = -f ]; do files+=(-f "$2"); shift 2; done
[ "${#files[@]}" -gt 0 ] || files=(-f "$here/compose.yaml")
# the bind-mount sources, beside the first compose file's folder (its ../runs and ../mlruns)
first="$(cd "$(dirname "${files[1]}")" && pwd)"
mkdir -p "$first/../runs" "$first/../mlruns"

if [ "$ENGINE" = docker ]; then
    exec docker compose "${files[@]}" "$@"
fi
if command -v podman-compose >/dev/null; then
    exec podman-compose "${files[@]}" "$@"
fi
echo "compose: no docker daemon and no podman-compose: pip install -c constraints.txt podman-compose" >&2
exit 2
