#!/usr/bin/env bash
# Live migration of idle TCG guests over an emulated WAN: QEMU plain,
# QEMU multifd + zstd, strato dedup, strato dedup + zstd, and strato with
# the destination site pre-seeded by an earlier guest, for 1, 2 and 4 VMs
# migrated at once (one migration group).
#
# WAN: source and destination namespaces joined by a veth pair shaped to
# RATE (default 100 Mbit/s) each way with tbf. This machine's kernel has no
# netem, so no delay is added (the 20 ms of the issue are not emulated).
# Bytes are the veth's counters (both directions: pages, ids, site queries,
# TCP/IP headers), time is from the first `migrate` to the last guest
# running at the destination, downtime is QEMU's own (max over the VMs).
#
# Guests: 256 MiB, the same kernel/initramfs, 8 MiB of seed-specific data
# each (scripts/build-guest.sh), idle. One run per cell.
#
# Env: STRATO_BIN (default target/release/strato, built if missing), OUT,
#      VMS (default "1 2 4"), MODES (default all), RATE (default 100mbit),
#      SEND_EXTRA (more `strato migrate send` flags, e.g. "--batch-pages 128").
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
OUT=${OUT:-$ROOT/target/bench-migrate}
mkdir -p "$OUT"

python3 - "$STRATO" "$GUEST" "$OUT" "${VMS:-1 2 4}" "${MODES:-plain multifd-zstd dedup dedup-zstd seeded}" "${RATE:-100mbit}" <<'PY'
import json, os, signal, socket, subprocess, sys, time
strato, guest, out, vms_list, modes, rate = sys.argv[1:7]
vms_list = [int(v) for v in vms_list.split()]
modes = modes.split()
pid = os.getpid()
NS_S, NS_D = f"smb{pid}s", f"smb{pid}d"
net = pid % 250 + 1
SIP, DIP = f"10.232.{net}.1", f"10.232.{net}.2"
AK, SK = "BENCHACCESSKEY000001", "bench-secret-key-0123456789abcdefghijkl"

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

def qemu(d, ns, seed, incoming=None):
    os.makedirs(d, exist_ok=True)
    args = ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-name", "bench", "-machine", "pc", "-accel", "tcg",
            "-cpu", "qemu64", "-smp", "1", "-m", "256", "-nographic", "-no-reboot", "-nodefaults",
            "-monitor", "none", "-chardev", f"socket,id=ser0,path={d}/serial.sock,server=on,wait=off",
            "-serial", "chardev:ser0", "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
            "-kernel", f"{guest}/vmlinuz", "-initrd", f"{guest}/initramfs.cpio",
            "-append", f"console=ttyS0 quiet panic=-1 strato.seed={seed} strato.data_mib=8"]
    if incoming:
        args += ["-incoming", incoming]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(f"{d}/qemu.log", "w"), stderr=subprocess.STDOUT)
    return p, Qmp(f"{d}/qmp.sock")

def wait_shell(d, limit=120):
    """Wait for the guest's shell on its serial console (reconnecting if
    the console drops us); after `limit` go on anyway, with a warning."""
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
                    return
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.5)
    print(f"warning: no shell seen in {d} after {limit} s; going on", file=sys.stderr)

def site_start(d):
    env = dict(os.environ, STRATO_DATA_DIR=f"{d}/site", STRATO_ACCESS_KEY=AK, STRATO_SECRET_KEY=SK)
    env.pop("STRATO_CONFIG", None)
    p = subprocess.Popen(["ip", "netns", "exec", NS_D, strato, "serve", "--listen", f"{DIP}:9000"],
                         env=env, stdout=subprocess.PIPE, stderr=open(f"{d}/serve.log", "w"), text=True)
    line = p.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"strato serve: {line}")
    return p

def site_flags():
    return f"--site http://{DIP}:9000 --access-key {AK} --secret-key {SK}"

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

def migrate_set(d, n, mode, seeds, group, site):
    """Migrate n guests at once; returns (bytes, seconds, max downtime, reports)."""
    srcs, dsts, procs = [], [], []
    try:
        for i in range(n):
            p, q = qemu(f"{d}/src{i}", NS_S, seeds[i]); procs.append(p); srcs.append(q)
        for i in range(n):
            wait_shell(f"{d}/src{i}")
        time.sleep(3)  # idle
        uris = []
        for i in range(n):
            port = 7100 + i
            if mode == "plain":
                inc, uri = f"tcp:{DIP}:{port}", f"tcp:{DIP}:{port}"
            elif mode == "multifd-zstd":
                inc, uri = "defer", f"tcp:{DIP}:{port}"
            else:
                extra = "--zstd 0" if mode == "dedup" else ""
                extra += " " + os.environ.get("SEND_EXTRA", "")
                inc = (f"exec:{strato} migrate recv --listen {DIP}:{port} {site_flags()} "
                       f"--report {d}/recv{i}.json 2>>{d}/recv{i}.log")
                uri = (f"exec:{strato} migrate send --to {DIP}:{port} {site_flags()} --group {group} "
                       f"--vm vm{i} {extra} --report {d}/send{i}.json 2>>{d}/send{i}.log")
            p, q = qemu(f"{d}/dst{i}", NS_D, seeds[i], inc); procs.append(p); dsts.append(q)
            if mode == "multifd-zstd":
                for qq in (q, srcs[i]):
                    qq.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
                    qq.cmd("migrate-set-parameters", **{"multifd-compression": "zstd"})
                q.cmd("migrate-incoming", uri=f"tcp:{DIP}:{port}")
            uris.append(uri)
        if mode in ("plain", "multifd-zstd"):
            time.sleep(1)
        before, t0 = wan_bytes(), time.time()
        for i in range(n):
            srcs[i].cmd("migrate", uri=uris[i])
        downtimes = []
        for i in range(n):
            end = time.time() + 900
            while True:
                info = srcs[i].cmd("query-migrate")
                if info.get("status") in ("completed", "failed", "cancelled"):
                    break
                if time.time() > end:
                    raise SystemExit("migration timed out")
                time.sleep(0.05)
            if info["status"] != "completed":
                raise SystemExit(f"{mode} vm{i}: {info}")
            downtimes.append(info.get("downtime", 0))
        for i in range(n):
            end = time.time() + 300
            while dsts[i].cmd("query-status")["status"] != "running":
                if time.time() > end:
                    raise SystemExit(f"{mode} dst{i} never ran")
                time.sleep(0.05)
        reports = []
        if mode not in ("plain", "multifd-zstd"):
            for i in range(n):
                end = time.time() + 120
                while not os.path.exists(f"{d}/send{i}.json"):
                    if time.time() > end:
                        raise SystemExit(f"no report: {open(f'{d}/send{i}.log').read()}")
                    time.sleep(0.05)
                reports.append(f"{d}/send{i}.json")
        secs = time.time() - t0
        time.sleep(0.5)
        return wan_bytes() - before, secs, max(downtimes), reports
    finally:
        stop(procs)

rows = []
netns_up()
try:
    for n in vms_list:
        for mode in modes:
            d = f"{out}/n{n}-{mode}"
            subprocess.run(["rm", "-rf", d]); os.makedirs(d)
            site = site_start(d) if mode not in ("plain", "multifd-zstd") else None
            try:
                if mode == "seeded":
                    # An earlier guest (another seed) migrated into this site first.
                    os.makedirs(f"{d}/earlier")
                    migrate_set(f"{d}/earlier", 1, "dedup-zstd", [99], f"early{n}", site)
                b, s, dt, reps = migrate_set(d, n, "dedup-zstd" if mode == "seeded" else mode,
                                             list(range(1, n + 1)), f"g{n}{mode}", site)
                verified = None
                if reps:
                    g = json.loads(subprocess.run([strato, "--json", "migrate", "report", *reps],
                                                  check=True, capture_output=True, text=True).stdout)
                    verified = g["all_verified"]
                    json.dump(g, open(f"{d}/group.json", "w"), indent=1)
                rows.append((n, mode, b, s, dt, verified))
                print(f"{n} VMs {mode:<13} {b/2**20:8.1f} MiB {s:7.1f} s downtime {dt} ms verified {verified}",
                      file=sys.stderr, flush=True)
            finally:
                stop([site])
finally:
    netns_down()

print(f"{'VMs':>3} {'mode':<13} {'WAN MiB':>8} {'vs plain':>8} {'vs mfd+zstd':>11} {'time s':>7} {'downtime ms':>11} verified")
base = {(n, m): b for n, m, b, *_ in rows}
for n, mode, b, s, dt, v in rows:
    p = base.get((n, "plain")); z = base.get((n, "multifd-zstd"))
    rp = f"{b/p:8.2f}" if p else f"{'-':>8}"
    rz = f"{b/z:11.2f}" if z else f"{'-':>11}"
    print(f"{n:>3} {mode:<13} {b/2**20:8.1f} {rp} {rz} {s:7.1f} {dt:>11} {'' if v is None else v}")
json.dump(rows, open(f"{out}/results.json", "w"), indent=1)
PY
