#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints how many inputs each executed.
#   fuzz/run.sh [SECONDS_PER_TARGET]   (default 60)
# Needs cargo-fuzz (installed here if missing). libFuzzer's sanitizer flags are unstable Rust
# options; RUSTC_BOOTSTRAP=1 lets the one stable toolchain of this project accept them.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
mkdir -p corpus artifacts
for t in wire_decode http_job_decode netstring_decode http_front; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log=$(mktemp)
  if ! cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    tail -40 "$log"
    echo "FAILED: $t (see fuzz/artifacts/$t/)"
    exit 1
  fi
  execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  echo "$t: ${execs:-?} executions in ${SECS} s, ${cov:-cov ?}"
  rm -f "$log"
done
