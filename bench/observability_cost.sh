#!/usr/bin/env bash
# What the metrics cost per request, counted in instructions (callgrind), which a noisy 2-core
# machine cannot blur the way it blurs requests per second.
#
# Builds prime_serverd from HEAD twice: as it is ("on"), and with bench/metrics_off.patch applied
# ("off": no histogram observed, no HTTP answer counted, and the clock readings only those need
# not made). Optionally a third binary (--baseline BIN, e.g. one built from a commit before a
# change). Then, for each binary, callgrind counts every instruction of the whole process (all
# threads) while `ab -k -c 8` sends N cheap requests (possible_prime=7), minus a run that serves
# no request (start-up and shut-down); binaries take turns, --rounds times. Prints instructions
# per request (median of the rounds) and the ratios to "off".
#
#   bench/observability_cost.sh [--requests N] [--rounds R] [--baseline BIN] [--save]
#
# The table goes to bench/out/observability.md (--save: also bench/results/), and the two
# binaries to bench/out/prime_serverd-{on,off} (for a throughput comparison with
# `bench/http.sh --baseline bench/out/prime_serverd-off`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REQUESTS=20000
ROUNDS=3
BASELINE=""
SAVE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) REQUESTS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --baseline) BASELINE=$(realpath "$2"); shift 2 ;;
    --save) SAVE=--save; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
need() { command -v "$1" >/dev/null || { apt-get install -y "$2" >/dev/null || { echo "needs $2" >&2; exit 2; }; }; }
need valgrind valgrind
need ab apache2-utils
need curl curl

RELEASE=$(python3 bench/benchlib.py release-dir)
OUT=$ROOT/bench/out
WORK=$(mktemp -d)
WT=""
cleanup() {
  [ -n "$WT" ] && git -C "$ROOT" worktree remove --force "$WT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"

echo "== building prime_serverd (HEAD, metrics on)"
cargo build --release -q -p prime_bin --bin prime_serverd
cp "$RELEASE/prime_serverd" "$WORK/on"
echo "== building prime_serverd (HEAD with bench/metrics_off.patch)"
WT="$WORK/off-tree"
git worktree add -q --detach "$WT" HEAD
git -C "$WT" apply "$ROOT/bench/metrics_off.patch" || {
  echo "bench/metrics_off.patch no longer applies: update it to the code" >&2
  exit 2
}
# The same target folder: only the two crates of the patched tree are built again.
(cd "$WT" && CARGO_TARGET_DIR=$(dirname "$RELEASE") cargo build --release -q -p prime_bin --bin prime_serverd)
cp "$RELEASE/prime_serverd" "$WORK/off"

cp "$WORK/on" "$OUT/prime_serverd-on"
cp "$WORK/off" "$OUT/prime_serverd-off"
BINS=(on off)
[ -n "$BASELINE" ] && { cp "$BASELINE" "$WORK/baseline"; BINS+=(baseline); }

# Instructions of one callgrind run of binary $1 serving $2 requests.
count() {
  local bin=$1 n=$2 port=$((20000 + RANDOM % 20000)) file="$WORK/cg.$RANDOM"
  valgrind --tool=callgrind --callgrind-out-file="$file" "$WORK/$bin" "127.0.0.1:$port" 4 \
    >"$WORK/log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/is_prime?possible_prime=7" && break
    sleep 0.2
  done
  if [ "$n" -gt 0 ]; then
    ab -q -k -n "$n" -c 8 "http://127.0.0.1:$port/is_prime?possible_prime=7" >"$WORK/ab"
    grep -q '^Failed requests: *0' "$WORK/ab" || { echo "failed requests:" >&2; cat "$WORK/ab" >&2; exit 1; }
  fi
  kill -INT "$pid"
  wait "$pid" || true
  awk '/^summary:/ {print $2}' "$file"
  rm -f "$file"
}

declare -A IDLE PER
for b in "${BINS[@]}"; do IDLE[$b]=$(count "$b" 0); done
for r in $(seq "$ROUNDS"); do
  for b in "${BINS[@]}"; do
    total=$(count "$b" "$REQUESTS")
    per=$(( (total - IDLE[$b]) / REQUESTS ))
    PER[$b]="${PER[$b]:-} $per"
    echo "round $r: $b $per instructions per request"
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
OFF=$(echo "${PER[off]}" | median)
{
  echo "# Instructions per cheap request ($(date -u +%F), $(git rev-parse --short HEAD), $REQUESTS requests x $ROUNDS rounds)"
  echo
  echo "| binary | per round | median | ratio to off |"
  echo "|---|---|---|---|"
  for b in "${BINS[@]}"; do
    m=$(echo "${PER[$b]}" | median)
    echo "| $b |${PER[$b]} | $m | $(awk -v a="$m" -v o="$OFF" 'BEGIN {printf "%.3f", a / o}') |"
  done
} | python3 bench/benchlib.py write observability.md $SAVE
