#!/usr/bin/env bash
# The prime demo across three network namespaces joined by veth links (tcp:// between the
# "hosts"), with hosts cut off and healed, or killed and restarted, under load (see
# bench/multihost.py). Needs root and iproute2's `ip`. Writes bench/out/multihost.md (--save: also
# bench/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/multihost.py "$@"
