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
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STRATO=${STRATO_BIN:-$ROOT/target/release/strato}
if [ -z "${STRATO_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin strato >&2)
fi
for t in qemu-system-x86_64 ip tc; do
  command -v $t >/dev/null || { echo "$t missing (scripts/test.sh installs it)" >&2; exit 1; }
done
GUEST=$("$ROOT/scripts/build-guest.sh")
OUT=${OUT:-$ROOT/target/bench-migrate-codec-live}
mkdir -p "$OUT"

python3 - "$STRATO" "$GUEST" "$OUT" "${RATE:-100mbit}" "${MODES:-agents-plain agents-codec qemu-plain qemu-xbzrle}" <<'PY'
import json, os, signal, socket, subprocess, sys, time
strato, guest, out, rate, modes = sys.argv[1:6]
modes = modes.split()
pid = os.getpid()
NS_S, NS_D = f"smc{pid}s", f"smc{pid}d"
net = pid % 250 + 1
SIP, DIP = f"10.233.{net}.1", f"10.233.{net}.2"
WORKLOAD = ("(while true; do dd if=/tmp/data of=/tmp/hot bs=4096 count=512 conv=notrunc 2>/dev/null; "
            "dd if=/dev/urandom of=/tmp/hot bs=64 count=16 seek=$((RANDOM % 32000)) conv=notrunc 2>/dev/null; done) "
            ">/dev/null 2>&1 & "
            "(i=0; while true; do i=$((i+1)); echo $i | dd of=/tmp/data bs=16 seek=$(( (i % 2048) * 256 )) "
            "conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 &")

def sh(*a, check=True):
    return subprocess.run(list(a), check=check, capture_output=True, text=True).stdout

def netns_up():
    sh("ip", "netns", "add", NS_S); sh("ip", "netns", "add", NS_D)
    sh("ip", "-n", NS_S, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1", "netns", NS_D)
    for ns, dev, ip in ((NS_S, "wan0", SIP), (NS_D, "wan1", DIP)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kbit", "latency", "50ms")

def netns_down():
    for ns in (NS_S, NS_D):
        for p in sh("ip", "netns", "pids", ns, check=False).split():
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("ip", "netns", "del", ns, check=False)

def wan_bytes():
    s = sh("ip", "netns", "exec", NS_S, "cat", "/sys/class/net/wan0/statistics/tx_bytes",
           "/sys/class/net/wan0/statistics/rx_bytes").split()
    return int(s[0]) + int(s[1])

def wait_path(path, limit=60):
    end = time.time() + limit
    while not os.path.exists(path):
        if time.time() > end:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.1)

class Qmp:
    def __init__(self, path):
        wait_path(path)
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(100):
            try:
                self.s.connect(path); break
            except OSError:
                time.sleep(0.1)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")
    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n"); self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise SystemExit(f"QMP {name}: {r['error']}")

def qemu(d, ns, incoming=None):
    os.makedirs(d, exist_ok=True)
    args = ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-name", "bench", "-machine", "pc", "-accel", "tcg",
            "-cpu", "qemu64", "-smp", "1", "-m", "256", "-nographic", "-no-reboot", "-nodefaults",
            "-monitor", "none", "-chardev", f"socket,id=ser0,path={d}/serial.sock,server=on,wait=off",
            "-serial", "chardev:ser0", "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
            "-kernel", f"{guest}/vmlinuz", "-initrd", f"{guest}/initramfs.cpio",
            "-append", "console=ttyS0 quiet panic=-1 strato.seed=9 strato.data_mib=8"]
    if incoming:
        args += ["-incoming", incoming]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(f"{d}/qemu.log", "w"), stderr=subprocess.STDOUT)
    return p, Qmp(f"{d}/qmp.sock")

def shell(d, cmd, limit=420):
    """Run `cmd` in the guest once its shell answers on the serial console."""
    wait_path(f"{d}/serial.sock")
    end = time.time() + limit
    while time.time() < end:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(f"{d}/serial.sock"); s.settimeout(1)
            seen = b""
            for _ in range(10):
                s.sendall(b'echo RE""ADY\n')
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    break
                seen += chunk
                if b"READY" in seen:
                    s.sendall((cmd + "\n").encode())
                    time.sleep(1)
                    return
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.5)
    raise SystemExit(f"no shell in {d}")

def stop(procs):
    for p in procs:
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        if p:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

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
            inc = f"exec:{strato} migrate recv --listen {DIP}:{port} --report {d}/recv.json 2>>{d}/recv.log"
            uri = (f"exec:{strato} migrate send --to {DIP}:{port} --vm bench {extra} "
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
