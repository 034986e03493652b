#!/usr/bin/env bash
# The file view (`strato mount`, FUSE) against the NBD export (`strato nbd
# serve`) of the same pseudo image, in one run on loopback:
#   1. time to first byte: one 4 KiB read of a cold export, from starting
#      the reader (qemu-io) to its exit, export already up;
#   2. per-read latency of READS random 4 KiB reads (qemu-io, O_DIRECT on
#      the file so the kernel's page cache is not what is measured),
#      uncached (first read of each chunk: an upstream fetch) and cached
#      (the same offsets again: the node's cache).
# Figures: medians and p90 in ms, and file view / NBD ratios. Each export
# has its own cache, both fetch from one `strato serve` started here.
#
#   SIZE_MB=256 READS=200 bash benches/fileview_bench.sh   (as root: FUSE)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SIZE_MB=${SIZE_MB:-256}
READS=${READS:-200}
need_tools qemu-io python3
[ "$(id -u)" = 0 ] || { echo "needs root (mount(2) of /dev/fuse)" >&2; exit 1; }
strato_bin
W=$(mktemp -d -t bench-fv.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  mountpoint -q "$W/view.img" 2>/dev/null && umount -l "$W/view.img"
  rm -rf "$W"
}
trap cleanup EXIT
export STRATO_ACCESS_KEY=STRBENCHKEY000000001 STRATO_SECRET_KEY=bench-secret-0123456789
export STRATO_DATA_DIR=$W/repo

head -c $((SIZE_MB << 20)) /dev/urandom >"$W/src.img"
"$STRATO" mb imgs >/dev/null
"$STRATO" put "$W/src.img" imgs/a.img --chunking block >/dev/null
"$STRATO" serve --listen 127.0.0.1:0 >"$W/serve.out" 2>"$W/serve.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "serving S3" "$W/serve.out" && break; sleep 0.1; done
EP=$(sed -n 's/^strato serving S3 at //p' "$W/serve.out" | head -1)
[ -n "$EP" ] || { echo "strato serve did not start" >&2; exit 1; }

"$STRATO" nbd serve --image s3://imgs/a.img --endpoint "$EP" --cache "$W/cache-nbd" \
  --socket "$W/nbd.sock" --name img >"$W/nbd.out" 2>"$W/nbd.err" &
PIDS+=($!)
"$STRATO" mount s3://imgs/a.img "$W/view.img" --endpoint "$EP" --cache "$W/cache-fv" \
  >"$W/fv.out" 2>"$W/fv.err" &
PIDS+=($!)
for _ in $(seq 100); do
  grep -q "serving" "$W/nbd.out" && grep -q "serving" "$W/fv.out" && break
  sleep 0.1
done
grep -q "serving" "$W/fv.out" || { cat "$W/fv.err" >&2; exit 1; }
NBD="nbd+unix:///img?socket=$W/nbd.sock"

# READS distinct random 4 KiB-aligned offsets (same for both exports).
python3 - "$SIZE_MB" "$READS" >"$W/offsets" <<'PY'
import random, sys
mb, n = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(7)
print("\n".join(str(o * 4096) for o in rng.sample(range(1, mb * 256), n)))
PY

# qemu-io reports ops/sec per read: latency in ms = 1000 / ops.
latencies() { grep -o '[0-9.]* ops/sec' | awk '{printf "%.4f\n", 1000 / $1}'; }
stats() { sort -g | awk '{a[NR]=$1} END {printf "%.3f %.3f\n", a[int((NR+1)/2)], a[int(NR*0.9)]}'; }
reads() { # reads TARGET QEMU_IO_ARGS...: one read of 4 KiB per offset, one process
  local target=$1; shift
  local cmds=()
  while read -r o; do cmds+=(-c "read $o 4k"); done <"$W/offsets"
  qemu-io "$@" -r "${cmds[@]}" "$target" | latencies
}
ttfb() { # ttfb TARGET QEMU_IO_ARGS...: seconds for one read at 0 of a cold export
  local t0 t1
  t0=$(now)
  qemu-io "${@:2}" -r -c "read 0 4k" "$1" >/dev/null
  t1=$(now)
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) * 1000}'
}

T_NBD=$(ttfb "$NBD" -f raw)
T_FV=$(ttfb "$W/view.img" -f raw -n)
read -r U_NBD U_NBD90 < <(reads "$NBD" -f raw | stats)
read -r U_FV U_FV90 < <(reads "$W/view.img" -f raw -n | stats)
read -r C_NBD C_NBD90 < <(reads "$NBD" -f raw | stats)
read -r C_FV C_FV90 < <(reads "$W/view.img" -f raw -n | stats)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
echo "file view (FUSE) vs NBD export, ${SIZE_MB} MiB image, $READS random 4 KiB reads, loopback, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-28s %10s %10s %8s\n' "" "file view" "NBD" "ratio"
printf '%-28s %10s %10s %8s\n' "time to first byte (ms)" "$T_FV" "$T_NBD" "$(ratio "$T_FV" "$T_NBD")"
printf '%-28s %10s %10s %8s\n' "uncached read, median (ms)" "$U_FV" "$U_NBD" "$(ratio "$U_FV" "$U_NBD")"
printf '%-28s %10s %10s %8s\n' "uncached read, p90 (ms)" "$U_FV90" "$U_NBD90" "$(ratio "$U_FV90" "$U_NBD90")"
printf '%-28s %10s %10s %8s\n' "cached read, median (ms)" "$C_FV" "$C_NBD" "$(ratio "$C_FV" "$C_NBD")"
printf '%-28s %10s %10s %8s\n' "cached read, p90 (ms)" "$C_FV90" "$C_NBD90" "$(ratio "$C_FV90" "$C_NBD90")"

# What each export fetched (so "uncached" is seen to be upstream fetches).
kill -TERM "${PIDS[1]}" "${PIDS[2]}"
wait "${PIDS[1]}" "${PIDS[2]}" 2>/dev/null || true
echo "NBD export:  $(grep '^export' "$W/nbd.out")"
echo "file view:   $(grep '^export' "$W/fv.out")"
