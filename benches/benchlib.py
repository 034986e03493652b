"""Shared helpers of the Python parts of the migration benches.

The bench scripts run `python3 - ARGS <<'PY' ... PY` with
PYTHONPATH=benches, then `from benchlib import *`. Everything here only
starts processes inside namespaces it creates, and everything it starts is
stopped by PID (Sites.down, stop)."""

import hashlib, json, os, signal, socket, subprocess, sys, time

MIB = 1 << 20
# Keys of the benches' throwaway sites (only reachable inside their namespaces).
AK, SK = "BENCHACCESSKEY000001", "bench-secret-key-0123456789abcdefghijkl"


def sh(*a, check=True):
    return subprocess.run(list(a), check=check, capture_output=True, text=True).stdout


class Sites:
    """Two namespaces (a source and a destination site) joined by one link:
    a veth pair shaped with tbf each way (wan="tbf"), or strato-wanem's two
    TAP devices (wan="wanem": rate, delay each way, drop-tail queue). The
    link device is wan0 at the source, wan1 at the destination."""

    def __init__(self, tag, subnet, wan="tbf", rate="100mbit", wanem=None, delay_ms="10", limit="420",
                 report_dir=None):
        pid = os.getpid()
        self.tag, self.wan, self.rate = f"{tag}{pid}", wan, rate
        self.wanem, self.delay_ms, self.limit, self.report_dir = wanem, str(delay_ms), str(limit), report_dir
        self.src, self.dst = f"{self.tag}s", f"{self.tag}d"
        net = pid % 250 + 1
        self.sip, self.dip = f"10.{subnet}.{net}.1", f"10.{subnet}.{net}.2"
        self.proc = None
        if wan not in ("tbf", "wanem"):
            raise SystemExit(f"WAN must be wanem or tbf (got {wan})")

    def up(self, tcp_wmem=None):
        sh("ip", "netns", "add", self.src); sh("ip", "netns", "add", self.dst)
        if self.wan == "tbf":
            sh("ip", "-n", self.src, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1", "netns", self.dst)
        else:
            a, b = f"{self.tag}a", f"{self.tag}b"
            log = open(f"{self.report_dir}/wanem.log", "w") if self.report_dir else subprocess.DEVNULL
            args = [self.wanem, "--tap-a", a, "--tap-b", b, "--rate", self.rate, "--delay-ms", self.delay_ms,
                    "--limit", self.limit]
            if self.report_dir:
                args += ["--report", f"{self.report_dir}/wanem.json"]
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
            line = self.proc.stdout.readline().strip()
            if line != f"tap-a={a} tap-b={b}":
                raise SystemExit(f"strato-wanem: {line!r}")
            # The TAPs, moved into the sites and renamed like the veth ends.
            for ns, tap, dev in ((self.src, a, "wan0"), (self.dst, b, "wan1")):
                sh("ip", "link", "set", tap, "netns", ns)
                sh("ip", "-n", ns, "link", "set", tap, "name", dev)
        if tcp_wmem:
            # TCP send buffers of the source site (per namespace), e.g. "4096 16384 262144".
            sh("ip", "netns", "exec", self.src, "sysctl", "-q", "-w", f"net.ipv4.tcp_wmem={tcp_wmem}")
        for ns, dev, ip in ((self.src, "wan0", self.sip), (self.dst, "wan1", self.dip)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            if self.wan == "tbf":
                sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", self.rate, "burst", "64kbit",
                   "latency", "50ms")

    def down(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for ns in (self.src, self.dst):
            for p in sh("ip", "netns", "pids", ns, check=False).split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)

    def wan_bytes(self):
        """Both directions of the source end's link counters: pages, ids,
        site queries, TCP/IP and Ethernet headers."""
        s = json.loads(sh("ip", "-n", self.src, "-j", "-s", "link", "show", "wan0"))[0]["stats64"]
        return s["rx"]["bytes"] + s["tx"]["bytes"]


def wait_path(path, limit=60):
    end = time.time() + limit
    while not os.path.exists(path):
        if time.time() > end:
            raise SystemExit(f"{path} never appeared")
        time.sleep(0.05)


class Qmp:
    """A QMP connection; events seen while waiting for answers are kept in
    `events` (QEMU timestamps them with the host clock)."""

    def __init__(self, path, limit=60):
        wait_path(path, limit)
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(100):
            try:
                self.s.connect(path); break
            except OSError:
                time.sleep(0.1)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.events = []
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n"); self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "event" in r:
                self.events.append(r)
            elif "return" in r:
                return r["return"]
            elif "error" in r:
                raise SystemExit(f"QMP {name}: {r['error']}")

    def event_time(self, name):
        ts = next(e["timestamp"] for e in self.events if e["event"] == name)
        return ts["seconds"] + ts["microseconds"] / 1e6


def qemu_guest(d, ns, guest, seed, incoming=None, mem_mib=256):
    """A TCG guest of scripts/build-guest.sh in namespace `ns`, with its
    serial console and QMP on unix sockets in `d`; returns (process, Qmp)."""
    os.makedirs(d, exist_ok=True)
    args = ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-name", "bench", "-machine", "pc", "-accel", "tcg",
            "-cpu", "qemu64", "-smp", "1", "-m", str(mem_mib), "-nographic", "-no-reboot", "-nodefaults",
            "-monitor", "none", "-chardev", f"socket,id=ser0,path={d}/serial.sock,server=on,wait=off",
            "-serial", "chardev:ser0", "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
            "-kernel", f"{guest}/vmlinuz", "-initrd", f"{guest}/initramfs.cpio",
            "-append", f"console=ttyS0 quiet panic=-1 strato.seed={seed} strato.data_mib=8"]
    if incoming:
        args += ["-incoming", incoming]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=open(f"{d}/qemu.log", "w"), stderr=subprocess.STDOUT)
    return p, Qmp(f"{d}/qmp.sock")


def guest_shell(d, cmd=None, limit=120, required=False):
    """Wait for the guest's shell on its serial console (reconnecting if the
    console drops us), then type `cmd` if given. After `limit` seconds: fail
    if `required`, else go on with a warning."""
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
                    if cmd:
                        s.sendall((cmd + "\n").encode())
                        time.sleep(1)
                    return
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.5)
    if required:
        raise SystemExit(f"no shell in {d}")
    print(f"warning: no shell seen in {d} after {limit} s; going on", file=sys.stderr)


def stop(procs, grace=20):
    """SIGTERM every process, wait `grace` seconds each, then SIGKILL."""
    for p in procs:
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        if p:
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_line(p, want, what, limit=60):
    """Read the process's stdout until a line containing `want` (bounded)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        line = p.stdout.readline()
        if want in line:
            return line
        if not line and p.poll() is not None:
            break
    raise SystemExit(f"{what} never printed {want!r}")


def md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(MIB), b""):
            h.update(b)
    return h.hexdigest()
