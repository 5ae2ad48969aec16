#!/usr/bin/env bash
# What CURVE costs between processes (see bench/curve.py and bench/README.md). Installs wrk and
# curl from Debian's packages when they are missing, builds the release binaries (under
# $CARGO_TARGET_DIR when set), runs, and writes bench/out/curve.md (--save: also bench/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk curl
fi
exec python3 bench/curve.py "$@"
