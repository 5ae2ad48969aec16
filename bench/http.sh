#!/usr/bin/env bash
# HTTP load benchmark (see bench/http_load.py and bench/README.md). Installs wrk and ab from Debian's
# packages when they are missing, builds the release binaries (where cargo puts them:
# $CARGO_TARGET_DIR when set), runs, and writes bench/out/http.md (--save: also bench/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v ab >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk apache2-utils
fi
exec python3 bench/http_load.py "$@"
