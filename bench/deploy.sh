#!/usr/bin/env bash
# Multi-process deployments under load and where a request's CPU goes per process (see
# bench/deploy.py and bench/README.md). Installs wrk from Debian's packages when it is missing,
# builds the release binaries (where cargo puts them: $CARGO_TARGET_DIR when set), runs, and
# writes bench/out/deploy.md (--save: also bench/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk
fi
exec python3 bench/deploy.py "$@"
