#!/usr/bin/env bash
# Simulation mode against pure compute, side by side in one run (medians of RUNS runs each).
#   bench/simulate.sh [START,END] [RUNS] [--save]
# Prints the table and writes it to bench/out/simulate.md (with --save also to
# bench/results/simulate.md, which BENCHMARKS.md quotes).
set -euo pipefail
cd "$(dirname "$0")/.."
SAVE=()
ARGS=()
for a in "$@"; do
  if [ "$a" = --save ]; then SAVE=(--save); else ARGS+=("$a"); fi
done
RANGE=${ARGS[0]:-100000000000000,100000000008000}
RUNS=${ARGS[1]:-3}
cargo build --release -q -p prime_bin
BIN=$(python3 bench/benchlib.py release-dir)/prime_serverd
declare -A times
run() { # name, args...
  local name=$1; shift
  for _ in $(seq "$RUNS"); do
    t=$("$BIN" "$@" | awk '/wall time/ {print $1}')
    times[$name]+="$t "
  done
}
# Interleave the configurations so machine noise hits them alike.
for _ in $(seq "$RUNS"); do
  RUNS_SAVED=$RUNS; RUNS=1
  run compute1 --compute-only "$RANGE" 1
  run compute2 --compute-only "$RANGE" 2
  run sim1 "$RANGE" 1
  run sim8 "$RANGE" 8
  RUNS=$RUNS_SAVED
done
median() { python3 -c 'import sys,statistics; print("%.3f" % statistics.median(float(x) for x in sys.argv[1:]))' $1; }
c1=$(median "${times[compute1]}"); c2=$(median "${times[compute2]}")
s1=$(median "${times[sim1]}"); s8=$(median "${times[sim8]}")
ratio() { python3 -c "print('%.3f' % ($1 / $2))"; }
{
  echo "Range $RANGE, $RUNS runs each, interleaved; medians. $(nproc) cores, $(date -u +%Y-%m-%d)."
  echo
  echo "| run | median wall time (s) | all runs (s) | vs half the single-thread compute |"
  echo "|---|---|---|---|"
  half=$(python3 -c "print($c1 / 2)")
  echo "| compute only, 1 thread (\`prime_serverd --compute-only $RANGE 1\`) | $c1 | ${times[compute1]}| – |"
  echo "| compute only, 2 threads (\`prime_serverd --compute-only $RANGE 2\`) | $c2 | ${times[compute2]}| $(ratio "$c2" "$half") |"
  echo "| simulation, 1 worker per stage (\`prime_serverd $RANGE 1\`) | $s1 | ${times[sim1]}| $(ratio "$s1" "$half") |"
  echo "| simulation, 8 workers per stage (\`prime_serverd $RANGE 8\`) | $s8 | ${times[sim8]}| $(ratio "$s8" "$half") |"
} | python3 bench/benchlib.py write simulate.md "${SAVE[@]}"
