#!/usr/bin/env bash
# Real QEMU (TCG) migrations driven by `strato migrate control`, with and
# without QEMU's xbzrle page deltas, for the CloudNet comparison's
# "vs QEMU's xbzrle" row: a 256 MiB guest keeps 8 MiB hot (partly rewritten
# in place) while it migrates at 100 Mbit/s (QEMU's max-bandwidth) under
# Xen's default stop, CloudNet's smart stop, and KVM's 300 ms downtime
# (bounded to 30 rounds). Reports RAM bytes on the wire, total time and
# downtime (QEMU's own figures). One run each; loopback unix sockets.
#
# Env: STRATO_BIN (default target/release/strato, built if missing), OUT.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STRATO=${STRATO_BIN:-$ROOT/target/release/strato}
if [ -z "${STRATO_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin strato >&2)
fi
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 missing (scripts/test.sh installs it)" >&2; exit 1; }
GUEST=$("$ROOT/scripts/build-guest.sh")
OUT=${OUT:-$ROOT/target/bench-migrate-policy-live}
mkdir -p "$OUT"
export STRATO_DATA_DIR="$OUT/data"

python3 - "$STRATO" "$GUEST" "$OUT" <<'PY'
import json, os, signal, socket, subprocess, sys, time
strato, guest, out = sys.argv[1:4]

def wait_sock(path, limit=30):
    end = time.time() + limit
    while not os.path.exists(path):
        if time.time() > end:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.1)

def qemu(d, incoming=None, ctl=False):
    os.makedirs(d, exist_ok=True)
    args = ["qemu-system-x86_64", "-name", "bench", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64",
            "-smp", "1", "-m", "256", "-nographic", "-no-reboot", "-nodefaults", "-monitor", "none",
            "-chardev", f"socket,id=ser0,path={d}/serial.sock,server=on,wait=off", "-serial", "chardev:ser0",
            "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
            "-kernel", f"{guest}/vmlinuz", "-initrd", f"{guest}/initramfs.cpio",
            "-append", "console=ttyS0 quiet panic=-1 strato.seed=9 strato.data_mib=8"]
    if ctl:
        args += ["-qmp", f"unix:{d}/ctl.sock,server=on,wait=off"]
    if incoming:
        args += ["-incoming", incoming]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(f"{d}/qemu.log", "w"), stderr=subprocess.STDOUT)
    wait_sock(f"{d}/qmp.sock")
    return p

def shell(d, cmd, marker, limit=180):
    wait_sock(f"{d}/serial.sock")
    s = socket.socket(socket.AF_UNIX)
    s.connect(f"{d}/serial.sock")
    s.settimeout(2)
    end, seen = time.time() + limit, b""
    while time.time() < end:
        s.sendall(f"echo {marker[:2]}\"\"{marker[2:]}\n".encode())
        try:
            while time.time() < end:
                seen += s.recv(65536)
                if marker.encode() in seen:
                    s.sendall((cmd + "\n").encode())
                    time.sleep(1)
                    s.close()
                    return
        except socket.timeout:
            pass
    raise SystemExit(f"no shell in {d}")

rows = []
for name, policy, xbz in [("xen", "xen", None), ("xen + xbzrle", "xen", 64), ("smart", "smart", None),
                          ("smart + xbzrle", "smart", 64), ("kvm", "kvm", None), ("kvm + xbzrle", "kvm", 64)]:
    d = f"{out}/{name.replace(' ', '').replace('+', '-')}"
    subprocess.run(["rm", "-rf", d])
    src = qemu(f"{d}/src", ctl=True)
    dst = None
    try:
        shell(f"{d}/src", "(while true; do dd if=/tmp/data of=/tmp/hot bs=4096 count=2048 conv=notrunc 2>/dev/null; "
              "dd if=/dev/urandom of=/tmp/hot bs=64 count=64 seek=$((RANDOM % 8000)) conv=notrunc 2>/dev/null; done) "
              ">/dev/null 2>&1 &", "READY_1")
        time.sleep(5)
        dst = qemu(f"{d}/dst", incoming=f"unix:{d}/mig.sock")
        wait_sock(f"{d}/mig.sock")
        params = f"{d}/params.toml"
        open(params, "w").write("[kvm]\nmax_downtime_s = 0.3\nmax_rounds = 30\n")
        cmd = [strato, "--json", "migrate", "control", "--qmp", f"{d}/src/ctl.sock", "--uri", f"unix:{d}/mig.sock",
               "--policy", policy, "--link-mbps", "100", "--memory-mib", "256", "--params", params, "--timeout-s", "900"]
        if xbz:
            cmd += ["--xbzrle-cache-mib", str(xbz)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1000)
        if r.returncode != 0:
            raise SystemExit(f"{name}: {r.stderr}")
        v = json.loads(r.stdout)["report"]
        json.dump(v, open(f"{d}/report.json", "w"), indent=1)
        rows.append((name, v))
    finally:
        for p in (src, dst):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
print(f"{'policy':<16} {'RAM MiB sent':>12} {'total s':>8} {'downtime ms':>11} {'rounds':>6}")
for name, v in rows:
    print(f"{name:<16} {v['transferred_bytes']/2**20:>12.1f} {v['total_time_ms']/1000:>8.1f} {v['downtime_ms']:>11} {len(v['rounds']):>6}")
PY
