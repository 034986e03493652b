#!/usr/bin/env bash
# Cost of the 4 KiB block index (store/blocks.rs), next to the same ingest
# without it in the same run: put time, peak RSS and metadata size on disk,
# per GiB of image, for both metadata engines. The image is random data (every
# block distinct and non-zero: the worst case; a real image has zero blocks
# and repeats, which cost nothing). Also the lookup rate of `have` for block
# ids vs chunk ids is covered by the store's unit tests, not timed here.
#
#   SIZE_MB=1024 RUNS=3 bash benches/block_index.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-3}
command -v /usr/bin/time >/dev/null || { echo "needs GNU time: apt-get install time" >&2; exit 1; }
cargo build --release -q
BIN=$PWD/target/release/strato
WORK=$(mktemp -d -p "$PWD/target" bench-blockidx.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/disk.img
head -c $((SIZE_MB << 20)) /dev/urandom > "$SRC"

time_of() { /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; cat "$WORK/t"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
meta_bytes() { du -sb "$1"/meta.* | awk '{s+=$1} END {print s}'; }

declare -A T
for run in $(seq "$RUNS"); do
  for engine in redb sled; do
    for mode in plain indexed; do
      D=$WORK/d-$engine-$mode
      rm -rf "$D"
      if [ $mode = indexed ]; then
        "$BIN" --data-dir "$D" --engine $engine mb --block-index img >/dev/null
      else
        "$BIN" --data-dir "$D" --engine $engine mb img >/dev/null
      fi
      sync
      read -r s rss < <(time_of "$BIN" --data-dir "$D" --engine $engine put --chunking block "$SRC" img/disk.img)
      T[put_${engine}_$mode]+="$s "; T[rss_${engine}_$mode]+="$rss "
      T[meta_${engine}_$mode]+="$(meta_bytes "$D") "
      rm -rf "$D"
    done
  done
done
m() { echo "${T[$1]}" | tr ' ' '\n' | grep . | median; }
echo "image: $SIZE_MB MiB random, block:16384 chunking; medians of $RUNS runs"
printf '%-7s %-8s %9s %8s %12s %14s %16s\n' engine index "put s" ratio "peak RSS" "meta bytes" "meta per GiB"
for engine in redb sled; do
  base=$(m put_${engine}_plain)
  for mode in plain indexed; do
    s=$(m put_${engine}_$mode); rss=$(m rss_${engine}_$mode); meta=$(m meta_${engine}_$mode)
    printf '%-7s %-8s %9s %8s %9s MB %14s %13s MB\n' "$engine" "$mode" "$s" \
      "$(awk -v a="$s" -v b="$base" 'BEGIN {printf "%.2f", a / b}')" \
      "$(awk -v k="$rss" 'BEGIN {printf "%.0f", k / 1024}')" "$meta" \
      "$(awk -v b="$meta" -v n="$SIZE_MB" 'BEGIN {printf "%.1f", b / 1e6 * 1024 / n}')"
  done
done
