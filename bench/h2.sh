#!/usr/bin/env bash
# HTTP/1.1, h2c and HTTP/2 over TLS side by side, and the TLS handshake rate (see
# bench/h2_load.py and bench/README.md). Installs wrk, h2load and openssl (Debian's wrk,
# nghttp2-client, openssl; openssl only makes the run's self-signed certificate) when they are
# missing, builds the release binaries (where cargo puts them: $CARGO_TARGET_DIR when set), runs,
# and writes bench/out/h2.md (--save: also bench/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null || ! command -v h2load >/dev/null || ! command -v openssl >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk nghttp2-client openssl
fi
exec python3 bench/h2_load.py "$@"
