#!/usr/bin/env bash
# Hypervisor-side figures in one run, on a SIZE_MB image (1 GiB by default;
# random data with a quarter of its 4 KiB blocks zero, as disk images have):
#   1. full delta pull then a local read of the file, vs
#   2. an NBD pseudo image serving a VM that reads 10 % of the image
#      (time to first byte, total time, upstream bytes — expect ~10 %);
#   3. 4 VMs reading through one pseudo image vs 4 separate pulls
#      (upstream bytes);
#   4. a delta pull of version 2 (5 % of the 4 KiB blocks changed): bytes
#      moved / image size.
# Everything runs on loopback against a `strato serve` started here.
#
#   SIZE_MB=1024 bash benches/hypervisor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
command -v qemu-io >/dev/null || { echo "needs qemu-io (qemu-utils)" >&2; exit 1; }
cargo build --release -q
BIN=$PWD/target/release/strato
W=$(mktemp -d -p "$PWD/target" bench-hv.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
export STRATO_ACCESS_KEY=STRBENCHKEY000000001 STRATO_SECRET_KEY=bench-secret-0123456789
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

python3 - "$W" "$SIZE_MB" <<'PY'
import os, random, sys
w, mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(5)
blocks = mb * 256
with open(f"{w}/v1.img", "wb") as f:
    for i in range(0, blocks, 256):   # 1 MiB at a time
        f.write(b"".join(bytes(4096) if rng.random() < 0.25 else rng.randbytes(4096) for _ in range(256)))
with open(f"{w}/v1.img", "rb") as src, open(f"{w}/v2.img", "wb") as dst:
    dst.write(src.read())
with open(f"{w}/v2.img", "r+b") as f:   # 5 % of the blocks changed
    for b in rng.sample(range(blocks), blocks // 20):
        f.seek(b * 4096); f.write(rng.randbytes(4096))
PY
SIZE=$((SIZE_MB << 20))
REPO=$W/repo
"$BIN" --data-dir "$REPO" mb img >/dev/null
"$BIN" --data-dir "$REPO" put "$W/v1.img" img/v1.img >/dev/null
"$BIN" --data-dir "$REPO" put "$W/v2.img" img/v2.img >/dev/null
"$BIN" --data-dir "$REPO" serve --listen 127.0.0.1:0 > "$W/serve.out" 2>"$W/serve.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "serving S3 at" "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
EP=$(sed -n 's/^strato serving S3 at //p' "$W/serve.out")
[ -n "$EP" ] || { echo "strato serve did not start" >&2; cat "$W/serve.err" >&2; exit 1; }

# 1. full pull, then reading the local file
t0=$(now)
"$BIN" --json pull s3://img/v1.img --endpoint "$EP" --cache "$W/c1" --out "$W/full.img" > "$W/pull1.json"
t1=$(now)
cat "$W/full.img" > /dev/null
t2=$(now)
PULL_S=$(secs "$t0" "$t1"); READ_S=$(secs "$t1" "$t2"); PULL_B=$(json "$W/pull1.json" fetched_bytes)

# 4. delta pull of version 2 into the same cache
"$BIN" --json pull s3://img/v2.img --endpoint "$EP" --cache "$W/c1" --out "$W/v2.out" > "$W/pull2.json"
DELTA_B=$(json "$W/pull2.json" fetched_bytes); DELTA_MS=$(json "$W/pull2.json" elapsed_ms)

# the reads of a VM touching 10 % of its disk: 1 MiB in every 10 MiB
reads() { for ((o = 0; o + 1 < SIZE_MB; o += 10)); do printf -- "-c\nread -q ${o}M 1M\n"; done; }
mapfile -t READS < <(reads)
export_up() { # name cache socket
  "$BIN" --json nbd serve --image s3://img/v1.img --endpoint "$EP" --cache "$2" --socket "$3" --name "$1" \
    > "$W/$1.stats" 2>"$W/$1.err" &
  PIDS+=($!); EXPORT_PID=$!
  for _ in $(seq 100); do [ -S "$3" ] && break; sleep 0.1; done
}
export_down() { kill -TERM "$EXPORT_PID"; wait "$EXPORT_PID" 2>/dev/null || true; }

# 2. one VM through a pseudo image
export_up one "$W/c2" "$W/one.sock"
t0=$(now)
qemu-io -r -f raw "nbd+unix:///one?socket=$W/one.sock" -c "read -q 0 4k"
t1=$(now)
qemu-io -r -f raw "nbd+unix:///one?socket=$W/one.sock" "${READS[@]}"
t2=$(now)
export_down
TTFB_S=$(secs "$t0" "$t1"); PSEUDO_S=$(secs "$t0" "$t2")
PSEUDO_B=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])['fetched_bytes'])" "$W/one.stats")

# 3. four VMs through one pseudo image
export_up four "$W/c3" "$W/four.sock"
t0=$(now)
VMS=()
for i in 1 2 3 4; do qemu-io -r -f raw "nbd+unix:///four?socket=$W/four.sock" "${READS[@]}" & VMS+=($!); done
wait_ok=0; for j in "${VMS[@]}"; do wait "$j" || wait_ok=1; done
t1=$(now)
export_down
[ "$wait_ok" = 0 ] || { echo "a VM's reads failed" >&2; exit 1; }
FOUR_S=$(secs "$t0" "$t1")
FOUR_B=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])['fetched_bytes'])" "$W/four.stats")

pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f %%", 100 * a / b}'; }
echo "image: $SIZE_MB MiB ($SIZE bytes), 25 % zero blocks; VM reads 1 MiB of every 10 MiB"
printf '%-52s %10s %16s %10s\n' "case" "seconds" "upstream bytes" "of image"
printf '%-52s %10s %16s %10s\n' "full pull (v1)" "$PULL_S" "$PULL_B" "$(pct "$PULL_B" "$SIZE")"
printf '%-52s %10s %16s %10s\n' "  then reading the local file" "$READ_S" "0" ""
printf '%-52s %10s %16s %10s\n' "pseudo image: first 4 KiB (time to first byte)" "$TTFB_S" "" ""
printf '%-52s %10s %16s %10s\n' "pseudo image: VM reads 10 %" "$PSEUDO_S" "$PSEUDO_B" "$(pct "$PSEUDO_B" "$SIZE")"
printf '%-52s %10s %16s %10s\n' "4 VMs through one pseudo image" "$FOUR_S" "$FOUR_B" "$(pct "$FOUR_B" "$SIZE")"
printf '%-52s %10s %16s %10s\n' "4 separate full pulls (4 x the pull above)" "" "$((4 * PULL_B))" "$(pct "$((4 * PULL_B))" "$SIZE")"
printf '%-52s %10s %16s %10s\n' "delta pull of v2 (5 % of blocks changed)" "$(awk -v m="$DELTA_MS" 'BEGIN {printf "%.2f", m / 1000}')" "$DELTA_B" "$(pct "$DELTA_B" "$SIZE")"
