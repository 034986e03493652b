#!/usr/bin/env bash
# Fuzz every target of fuzz/ with cargo-fuzz (libFuzzer, nightly) for
# FUZZ_SECS each (default 600: the full run), starting from the kept inputs
# in fuzz/regressions/TARGET/. Reports per target: executions, executions
# per second, coverage (libFuzzer's cov: edges) and crashes. A crash's input
# is copied to fuzz/regressions/TARGET/ so that, once fixed, `cargo test`
# (fuzz/tests/regressions.rs, stable) keeps it fixed; the script then fails.
#
# Env: FUZZ_SECS (default 600), TARGETS (default: all), OUT.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need_tools cargo
cargo +nightly fuzz --version >/dev/null 2>&1 ||
  { echo "cargo-fuzz on nightly missing (cargo install cargo-fuzz; rustup toolchain install nightly)" >&2; exit 1; }
FUZZ_DIR=$ROOT/fuzz/libfuzzer
OUT=${OUT:-$ROOT/target/bench-fuzz}
SECS=${FUZZ_SECS:-600}
mkdir -p "$OUT"
targets=${TARGETS:-$(cd "$FUZZ_DIR/fuzz_targets" && ls | sed 's/\.rs$//')}
(cd "$ROOT" && cargo +nightly fuzz build --fuzz-dir "$FUZZ_DIR" -O >&2)

crashed=0
printf '%-16s %12s %10s %8s %8s\n' target executions exec/s cov crashes
for t in $targets; do
  corpus=$OUT/corpus/$t
  artifacts=$OUT/artifacts/$t/
  # Findings of this run only (earlier ones are in fuzz/regressions/ already).
  rm -rf "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cp -n "$ROOT/fuzz/regressions/$t/"* "$corpus/" 2>/dev/null || true
  log=$OUT/$t.log
  # -max_total_time bounds the run; -rss_limit_mb and -timeout bound each
  # input (an input that hangs or balloons is a finding too).
  (cd "$ROOT" && cargo +nightly fuzz run --fuzz-dir "$FUZZ_DIR" -O "$t" "$corpus" -- \
      -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$artifacts" >"$log" 2>&1) || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  # libFuzzer's own average is an integer over the whole run (0 when cut
  # short by a crash); this is executions over the time allowed.
  rate=$(( ${execs:-0} / SECS ))
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
  found=$(find "$artifacts" -type f | wc -l)
  printf '%-16s %12s %10s %8s %8s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$found"
  if [ "$found" -gt 0 ]; then
    crashed=1
    for f in "$artifacts"*; do
      cp "$f" "$ROOT/fuzz/regressions/$t/$(basename "$f")"
    done
  fi
done
if [ "$crashed" = 1 ]; then
  echo "crashes found: inputs copied to fuzz/regressions/; fix them, then cargo test -p strato-fuzz" >&2
  exit 1
fi
