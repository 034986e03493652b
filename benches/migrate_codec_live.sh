#!/usr/bin/env bash
# Live migration of a memory-dirtying TCG guest over a 100 Mbit/s link
# (veth pair between two network namespaces, shaped with tbf each way):
#   agents-plain  strato migrate send|recv, redundancy cache and page deltas
#                 off (--rcache-blocks 0 --no-deltas; repeats by id + zstd)
#   agents-codec  the same with the cache (4 blocks/page) and page deltas on
#   qemu-plain    QEMU straight over TCP (reference)
#   qemu-xbzrle   QEMU straight over TCP with xbzrle (64 MiB cache), QEMU's
#                 own page deltas
# Same guest workload in every mode: a 2 MiB hot region copied over and
# over, small random writes into it, and a counter written into 2048 pages
# of an 8 MiB file, running while the guest migrates. QEMU's default
# downtime limit (300 ms) decides the switchover. Bytes are the source
# end's veth counters (both directions), time from `migrate` to the guest
# running at the destination, downtime QEMU's own. One run each.
#
# Env: STRATO_BIN (default target/release/strato, built if missing), OUT,
#      RATE (default 100mbit), MODES (default all four).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
strato_bin
need_tools qemu-system-x86_64 ip tc
GUEST=$("$ROOT/scripts/build-guest.sh")
OUT=${OUT:-$ROOT/target/bench-migrate-codec-live}
mkdir -p "$OUT"

PYTHONPATH="$ROOT/benches" python3 - "$STRATO" "$GUEST" "$OUT" "${RATE:-100mbit}" "${MODES:-agents-plain agents-codec qemu-plain qemu-xbzrle}" <<'PY'
import json, os, subprocess, sys, time
from benchlib import *
strato, guest, out, rate, modes = sys.argv[1:6]
modes = modes.split()
sites = Sites("smc", 233, wan="tbf", rate=rate)
NS_S, NS_D, SIP, DIP = sites.src, sites.dst, sites.sip, sites.dip
WORKLOAD = ("(while true; do dd if=/tmp/data of=/tmp/hot bs=4096 count=512 conv=notrunc 2>/dev/null; "
            "dd if=/dev/urandom of=/tmp/hot bs=64 count=16 seek=$((RANDOM % 32000)) conv=notrunc 2>/dev/null; done) "
            ">/dev/null 2>&1 & "
            "(i=0; while true; do i=$((i+1)); echo $i | dd of=/tmp/data bs=16 seek=$(( (i % 2048) * 256 )) "
            "conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 &")

netns_up, netns_down, wan_bytes = sites.up, sites.down, sites.wan_bytes

def qemu(d, ns, incoming=None):
    return qemu_guest(d, ns, guest, 9, incoming)

def shell(d, cmd, limit=420):
    guest_shell(d, cmd, limit, required=True)

def run(mode):
    d = f"{out}/{mode}"
    subprocess.run(["rm", "-rf", d]); os.makedirs(d)
    procs = []
    try:
        src_p, src = qemu(f"{d}/src", NS_S); procs.append(src_p)
        shell(f"{d}/src", WORKLOAD)
        time.sleep(5)  # the workload runs before and during the migration
        port = 7300
        if mode.startswith("agents"):
            extra = "--rcache-blocks 0 --no-deltas" if mode == "agents-plain" else "--rcache-blocks 4 --deltas"
            inc = f"exec:{strato} migrate recv --insecure --listen {DIP}:{port} --report {d}/recv.json 2>>{d}/recv.log"
            uri = (f"exec:{strato} migrate send --insecure --to {DIP}:{port} --vm bench {extra} "
                   f"--report {d}/send.json 2>>{d}/send.log")
        else:
            inc = uri = f"tcp:{DIP}:{port}"
        dst_p, dst = qemu(f"{d}/dst", NS_D, inc); procs.append(dst_p)
        if mode == "qemu-xbzrle":
            for q in (src, dst):
                q.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True}])
            src.cmd("migrate-set-parameters", **{"xbzrle-cache-size": 64 << 20})
        time.sleep(1)
        before, t0 = wan_bytes(), time.time()
        src.cmd("migrate", uri=uri)
        end = time.time() + 900
        info = {}
        while True:
            if time.time() > end:
                raise SystemExit(f"{mode}: migration timed out: {info}")
            info = src.cmd("query-migrate")
            if info.get("status") in ("failed", "cancelled"):
                raise SystemExit(f"{mode}: {info}")
            if info.get("status") == "completed" and dst.cmd("query-status")["status"] == "running":
                break
            time.sleep(0.05)
        secs = time.time() - t0
        report = None
        if mode.startswith("agents"):
            wait_path(f"{d}/send.json", 120)
            time.sleep(0.2)
            report = json.load(open(f"{d}/send.json"))
        time.sleep(0.5)
        b = wan_bytes() - before
        row = {"mode": mode, "wan_bytes": b, "seconds": secs, "downtime_ms": info.get("downtime"),
               "qemu_ram_bytes": info.get("ram", {}).get("transferred"),
               "dirty_sync_count": info.get("ram", {}).get("dirty-sync-count"),
               "xbzrle": info.get("xbzrle-cache"), "agent": report}
        json.dump(row, open(f"{d}/row.json", "w"), indent=1)
        print(f"{mode:<13} {b/2**20:8.1f} MiB {secs:7.1f} s downtime {row['downtime_ms']} ms "
              f"rounds {row['dirty_sync_count']}", file=sys.stderr, flush=True)
        return row
    finally:
        stop(procs)

rows = []
netns_up()
try:
    for m in modes:
        rows.append(run(m))
finally:
    netns_down()
json.dump(rows, open(f"{out}/results.json", "w"), indent=1)
by = {r["mode"]: r for r in rows}
base = by.get("agents-plain")
print(f"link {rate} (tbf each way), one run each")
print(f"{'mode':<13} {'WAN MiB':>8} {'vs plain':>8} {'time s':>7} {'vs plain':>8} {'downtime ms':>11} {'rounds':>6} "
      f"{'cache pg':>8} {'delta pg':>8} {'saved MiB':>9} verified")
for r in rows:
    a = r["agent"] or {}
    saved = (a.get("saved", {}).get("cache", 0) + a.get("saved", {}).get("delta", 0)) / 2**20 if a else 0
    vb = f"{r['wan_bytes']/base['wan_bytes']:8.2f}" if base else f"{'-':>8}"
    vt = f"{r['seconds']/base['seconds']:8.2f}" if base else f"{'-':>8}"
    print(f"{r['mode']:<13} {r['wan_bytes']/2**20:8.1f} {vb} {r['seconds']:7.1f} {vt} {r['downtime_ms']!s:>11} "
          f"{r['dirty_sync_count']!s:>6} {a.get('pages', {}).get('cache', '-')!s:>8} "
          f"{a.get('pages', {}).get('delta', '-')!s:>8} {saved:9.2f} {a.get('verified', '-')}")
for x, y in (("agents-codec", "agents-plain"), ("agents-codec", "qemu-xbzrle"), ("qemu-xbzrle", "qemu-plain")):
    if x in by and y in by:
        print(f"{x} / {y}: WAN bytes {by[x]['wan_bytes']/by[y]['wan_bytes']:.2f}, "
              f"time {by[x]['seconds']/by[y]['seconds']:.2f}")
PY
