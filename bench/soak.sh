#!/usr/bin/env bash
# Soak test with worker processes killed and restarted under load (see bench/soak.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/soak.py "$@"
