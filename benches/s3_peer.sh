#!/usr/bin/env bash
# strato vs s3s-fs (the file-system S3 server of the s3s project, built from
# its published crate), side by side in one run with the same boto3 client:
# single PUT, multipart PUT, GET and ranged GET of a SIZE_MB object, medians
# of RUNS, one table with strato/s3s-fs ratios (benches/s3_peer.py).
#
#   bash benches/s3_peer.sh                 (1 GiB, 3 runs)
#   SIZE_MB=256 RUNS=1 bash benches/s3_peer.sh
#
# s3s-fs is installed into target/s3s-fs (never committed) when missing:
#   cargo install s3s-fs --version $S3S_FS_VERSION --features binary --root target/s3s-fs
# S3S_FS_VERSION defaults to 0.14.1, the s3s release strato itself builds on
# and the newest s3s-fs this toolchain (rustc 1.95) can build: 0.17 needs
# rustc 1.96. The install took 290 s here (2 cores, load 4-5 from other builds).
# Both servers listen on 127.0.0.1 only and keep their data under a
# temporary directory that is removed at exit; both are stopped by PID.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-3}
PY=${STRATO_TEST_PYTHON:-$ROOT/.venv/bin/python}
"$PY" -c 'import boto3' 2>/dev/null || { echo "boto3 missing in $PY (scripts/test.sh makes the venv)" >&2; exit 1; }
strato_bin
PEER=$ROOT/target/s3s-fs/bin/s3s-fs
if [ ! -x "$PEER" ]; then
  echo "s3_peer: installing s3s-fs into target/s3s-fs" >&2
  t0=$(now)
  cargo install s3s-fs --version "${S3S_FS_VERSION:-0.14.1}" --features binary --root "$ROOT/target/s3s-fs" >&2
  echo "s3_peer: s3s-fs installed in $(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.0f", b - a}') s" >&2
fi
echo "s3_peer: $("$PEER" --version 2>/dev/null || echo s3s-fs)" >&2

WORK=$(mktemp -d -p "${S3_BENCH_DIR:-/var/tmp}" strato-s3-peer.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
export PEER_AK=STRBENCHACCESSKEY001 PEER_SK=bench-secret-key-0123456789abcdefghijkl

head -c $((SIZE_MB << 20)) /dev/urandom > "$WORK/src.bin"

# strato: port 0, the endpoint from its first line.
mkdir -p "$WORK/strato" "$WORK/s3s"
STRATO_DATA_DIR=$WORK/strato STRATO_ACCESS_KEY=$PEER_AK STRATO_SECRET_KEY=$PEER_SK \
  "$STRATO" serve --listen 127.0.0.1:0 > "$WORK/strato.out" 2> "$WORK/strato.err" &
PIDS+=($!)
# s3s-fs takes a fixed port: ask the kernel for a free one.
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PEER" --host 127.0.0.1 --port "$PORT" --access-key "$PEER_AK" --secret-key "$PEER_SK" "$WORK/s3s" \
  > "$WORK/s3s.out" 2>&1 &
PIDS+=($!)
EP=""
for _ in $(seq 100); do
  EP=$(sed -n 's/^strato serving S3 at //p' "$WORK/strato.out" | head -1)
  [ -n "$EP" ] && "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break
  sleep 0.1
done
[ -n "$EP" ] || { echo "strato serve did not start: $(cat "$WORK/strato.err")" >&2; exit 1; }
"$PY" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null \
  || { echo "s3s-fs did not start: $(cat "$WORK/s3s.out")" >&2; exit 1; }

echo "s3_peer: load before the run: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PY" "$ROOT/benches/s3_peer.py" "$WORK/src.bin" "$RUNS" strato="$EP" s3s-fs="http://127.0.0.1:$PORT"
echo "load after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
