#!/usr/bin/env bash
# Which chunking profile for images? Builds two versions of a filesystem
# image (mkfs.ext4 -d from a directory tree; v2 = v1 plus added files, some
# removed, one rewritten), converts each to qcow2, and stores
# v1.raw, v2.raw, v1.qcow2, v2.qcow2 in that order under each profile in a
# fresh store. Reports stored bytes and chunk counts after each step, next to
# the images' non-zero bytes (the baseline: what storing them without any
# dedup would cost).
#
#   TREE_MB=160 bash benches/profiles.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TREE_MB=${TREE_MB:-160}
cargo build --release -q
BIN=$PWD/target/release/strato
WORK=$(mktemp -d -p "$PWD/target" bench-profiles.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/tree" "$TREE_MB" <<'PY'
import os, random, sys
root, mb = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
total, i = 0, 0
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
while total < mb << 20:
    d = os.path.join(root, f"usr/share/pkg{i % 40}")
    os.makedirs(d, exist_ok=True)
    size = int(rng.paretovariate(1.2) * 6000) % (6 << 20) + 100
    kind = i % 4
    if kind == 0:   # text: docs, scripts
        data = b" ".join(rng.choice(words) for _ in range(size // 5))[:size]
    elif kind == 1: # binaries: mostly random with repeated sections
        block = rng.randbytes(4096)
        data = b"".join(block if rng.random() < 0.1 else rng.randbytes(4096) for _ in range(size // 4096 + 1))[:size]
    else:           # compressed data
        data = rng.randbytes(size)
    open(os.path.join(d, f"f{i}"), "wb").write(data)
    total += size; i += 1
PY
mk() { mkfs.ext4 -q -F -b 4096 -E root_owner=0:0 -d "$WORK/tree" "$1" "$((TREE_MB * 2))M"; }
mk "$WORK/v1.raw"
python3 - "$WORK/tree" <<'PY'
import os, random, sys
root = sys.argv[1]; rng = random.Random(2)
files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs)
for f in rng.sample(files, 10): os.remove(f)                      # packages removed
for k in range(3):                                                  # packages added
    d = os.path.join(root, f"opt/new{k}"); os.makedirs(d, exist_ok=True)
    for j in range(20): open(os.path.join(d, f"n{j}"), "wb").write(rng.randbytes(rng.randint(1000, 400000)))
victim = [f for f in files if os.path.exists(f)][5]
open(victim, "wb").write(rng.randbytes(300000))                     # a file rewritten
PY
mk "$WORK/v2.raw"
qemu-img convert -f raw -O qcow2 "$WORK/v1.raw" "$WORK/v1.qcow2"
qemu-img convert -f raw -O qcow2 "$WORK/v2.raw" "$WORK/v2.qcow2"
nonzero() { python3 -c "
import sys; f=open(sys.argv[1],'rb'); n=0
while True:
    b=f.read(4096)
    if not b: break
    if b.count(0) != len(b): n+=len(b)
print(n)" "$1"; }
NZ1=$(nonzero "$WORK/v1.raw"); NZ2=$(nonzero "$WORK/v2.raw")
echo "non-zero bytes: v1.raw $((NZ1 >> 20)) MiB, v2.raw $((NZ2 >> 20)) MiB (no-dedup cost of all four: ~$(((2 * NZ1 + 2 * NZ2) >> 20)) MiB)"
printf '%-26s %12s %12s %12s %12s %10s %s\n' profile "+v1.raw" "+v2.raw" "+v1.qcow2" "+v2.qcow2" chunks "(stored MiB after each step)"
for profile in fixed:4096 block:16384 block:65536 cdc:16384:65536:262144 fixed:65536; do
  D=$WORK/data; rm -rf "$D"
  "$BIN" --data-dir "$D" mb img >/dev/null
  row=()
  for f in v1.raw v2.raw v1.qcow2 v2.qcow2; do
    "$BIN" --data-dir "$D" put "$WORK/$f" "img/$f" --chunking "$profile" >/dev/null
    row+=("$("$BIN" --data-dir "$D" --json stats | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["stored_bytes"] / 1048576))')")
  done
  chunks=$("$BIN" --data-dir "$D" --json stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')
  printf '%-26s %12s %12s %12s %12s %10s\n' "$profile" "${row[@]}" "$chunks"
done
