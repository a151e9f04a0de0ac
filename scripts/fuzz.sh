#!/usr/bin/env bash
# Fuzzing with libFuzzer through cargo-fuzz (nightly toolchain, AddressSanitizer). Targets are
# in fuzz/fuzz_targets, their code in crates/fuzzing; committed seeds in fuzz/seeds/<target>,
# each crash found in fuzz/regressions/<target> (replayed by `cargo test -p atelier-fuzzing`).
#
#   scripts/fuzz.sh smoke [SECONDS]       every target for SECONDS (default 10) from its seeds
#   scripts/fuzz.sh run TARGET SECONDS    one long run; the working corpus grows in
#                                         fuzz/corpus/TARGET (not committed), crashes land in
#                                         fuzz/artifacts/TARGET; prints the execution count
#
# Limits: 2 GB RSS, 1 s per input (a slower input is a finding, like a crash).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-smoke}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz.sh: needs the nightly toolchain (cargo-fuzz builds with sanitizers)" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
targets=$(ls fuzz/fuzz_targets | sed 's/\.rs$//')
run() { # TARGET SECONDS
  mkdir -p "fuzz/corpus/$1"
  local log rc=0
  log=$(mktemp)
  # stylize_request keeps a whole server (database, catalog, runtime) alive between inputs,
  # so libFuzzer's per-input leak check (a LeakSanitizer scan of that heap whenever an input
  # allocated more than it freed) took ~75 % of its time: 300 executions/s with it, 1,250
  # without. Leaks of the server are measured by bench/overload.py's RSS check instead.
  local extra=()
  # Its server also loads every built-in style before the first input (~20 s under the
  # sanitizer, untimed per input but counted in libFuzzer's total time), so it gets that on top.
  local secs=$2
  [ "$1" = stylize_request ] && extra=(-detect_leaks=0) && secs=$((secs + 30))
  (cd fuzz && cargo +nightly fuzz run -O "$1" "corpus/$1" "seeds/$1" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=1 -print_final_stats=1 "${extra[@]}") > "$log" 2>&1 || rc=$?
  grep -E '^(Done|stat::number_of_executed_units|==[0-9]+==|SUMMARY|.*panicked)' "$log" || true
  if [ $rc -ne 0 ]; then
    # libFuzzer's status: non-zero on a crash, an OOM or a timeout; the input is in
    # fuzz/artifacts/TARGET.
    tail -60 "$log" >&2
    echo "fuzz.sh: $1 failed (status $rc)" >&2
  fi
  rm -f "$log"
  return $rc
}
case $what in
  smoke)
    secs=${2:-10}
    (cd fuzz && cargo +nightly fuzz build -O)
    for t in $targets; do
      echo "-- fuzz $t (${secs}s)"
      run "$t" "$secs"
    done
    ;;
  run)
    run "${2:?target}" "${3:?seconds}"
    ;;
  *)
    echo "usage: $0 smoke [SECONDS] | run TARGET SECONDS" >&2
    exit 2
    ;;
esac
