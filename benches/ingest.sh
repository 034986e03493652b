#!/usr/bin/env bash
# Whole-process store figures, each next to its baseline measured in the same
# run on the same disk: ingest of unique and of already-stored data vs the
# slower of `md5sum FILE` (the ETag's MD5 is the ingest ceiling) and
# `cp FILE`, and unique ingest vs `md5sum` alone (issue 14's target: 0.9);
# sequential get (verified, and with verify_reads = false) vs reading the
# plain file; peak RSS. Both metadata engines. Medians of RUNS. The machine
# may be shared: the load average before and after is printed, rerun a run
# that was disturbed.
#
#   SIZE_MB=2048 RUNS=3 bash benches/ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-2048}
RUNS=${RUNS:-3}
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install time" >&2; exit 1; }
[ -n "${STRATO_BIN:-}" ] || cargo build --release -q -p strato --bin strato
BIN=${STRATO_BIN:-$PWD/target/release/strato}
WORK=$(mktemp -d -p "$PWD/target" bench-ingest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/src.bin
head -c $((SIZE_MB << 20)) /dev/urandom > "$SRC"
printf 'verify_reads = false\n' > "$WORK/noverify.toml"

# time_of CMD... -> prints "seconds maxrss_kb"
time_of() { /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; cat "$WORK/t"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A T
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for run in $(seq "$RUNS"); do
  sync
  T[md5]+="$(time_of md5sum "$SRC" | cut -d' ' -f1) "
  T[cp]+="$(time_of cp "$SRC" "$WORK/copy" | cut -d' ' -f1) "
  rm -f "$WORK/copy"; sync
  T[cat]+="$(time_of cat "$SRC" | cut -d' ' -f1) "
  for engine in redb sled; do
    D=$WORK/data-$engine
    rm -rf "$D"
    "$BIN" --data-dir "$D" --engine $engine mb bench >/dev/null
    sync
    read -r s rss < <(time_of "$BIN" --data-dir "$D" --engine $engine put "$SRC" bench/a)
    T[put_$engine]+="$s "; T[put_rss_$engine]+="$rss "
    read -r s rss < <(time_of "$BIN" --data-dir "$D" --engine $engine put "$SRC" bench/b)
    T[dup_$engine]+="$s "; T[dup_rss_$engine]+="$rss "
    read -r s rss < <(time_of "$BIN" --data-dir "$D" --engine $engine get bench/a /dev/null)
    T[get_$engine]+="$s "; T[get_rss_$engine]+="$rss "
    read -r s _ < <(time_of "$BIN" --data-dir "$D" --engine $engine --config "$WORK/noverify.toml" get bench/a /dev/null)
    T[getnv_$engine]+="$s "
    rm -rf "$D"
  done
done
m() { echo "${T[$1]}" | tr ' ' '\n' | grep . | median; }
md5=$(m md5); cp=$(m cp); cat_=$(m cat)
limit=$(awk -v a="$md5" -v b="$cp" 'BEGIN {print (a > b) ? a : b}')
mbps() { awk -v s="$1" -v n="$SIZE_MB" 'BEGIN {printf "%.0f MB/s", n * 1.048576 / s}'; }
ratio() { awk -v base="$1" -v s="$2" 'BEGIN {printf "%.2f", base / s}'; }
echo "object: $SIZE_MB MiB random; medians of $RUNS runs"
printf '%-38s %8s %12s %8s %10s\n' "measure" "seconds" "throughput" "ratio" "peak RSS"
printf '%-38s %8s %12s %8s %10s\n' "md5sum FILE" "$md5" "$(mbps "$md5")" "" ""
printf '%-38s %8s %12s %8s %10s\n' "cp FILE (same disk)" "$cp" "$(mbps "$cp")" "" ""
printf '%-38s %8s %12s %8s %10s\n' "ingest limit = slower of the two" "$limit" "$(mbps "$limit")" "1.00" ""
printf '%-38s %8s %12s %8s %10s\n' "cat FILE > /dev/null (read baseline)" "$cat_" "$(mbps "$cat_")" "1.00" ""
for engine in redb sled; do
  p=$(m put_$engine); d=$(m dup_$engine); g=$(m get_$engine); gn=$(m getnv_$engine)
  printf '%-38s %8s %12s %8s %10s\n' "[$engine] put, unique data" "$p" "$(mbps "$p")" "$(ratio "$limit" "$p")" "$(m put_rss_$engine) KB"
  printf '%-38s %8s %12s %8s %10s\n' "[$engine] put, unique vs md5sum (0.9)" "$p" "$(mbps "$p")" "$(ratio "$md5" "$p")" ""
  printf '%-38s %8s %12s %8s %10s\n' "[$engine] put, already stored" "$d" "$(mbps "$d")" "$(ratio "$limit" "$d")" "$(m dup_rss_$engine) KB"
  printf '%-38s %8s %12s %8s %10s\n' "[$engine] get, verified (vs cat)" "$g" "$(mbps "$g")" "$(ratio "$cat_" "$g")" "$(m get_rss_$engine) KB"
  printf '%-38s %8s %12s %8s %10s\n' "[$engine] get, verify_reads=false" "$gn" "$(mbps "$gn")" "$(ratio "$cat_" "$gn")" ""
done
echo "load average (1, 5, 15 min): $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after"
