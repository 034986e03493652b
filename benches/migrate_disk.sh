#!/usr/bin/env bash
# Disk migration (non-shared storage) of a 256 MiB image over a 100 Mbit/s
# veth between two network namespaces (tbf; this kernel has no netem):
# QEMU's plain blockdev-mirror into the destination's NBD export, against
# the same mirror through `strato migrate disk-send` -> WAN ->
# `strato migrate disk-recv` with the destination site holding the image
# (block-indexed bucket). The disk: a qcow2 overlay over the image (IMAGE_MIB,
# default 256: 3/4 random, 1/4 zeros) with CHANGED_MIB (default 16) of new
# random data. QEMU runs as qemu-storage-daemon on both sides (the mirror
# and the NBD export are the same code as in a VM). Bytes are the source end's
# link counters (both directions), time from blockdev-mirror to the job's
# end; the destination disk is checked against the source's every run.
# The strato mode runs twice: plain TCP (--insecure) and over mutual TLS 1.3
# (certificates from `strato migrate certs`), reported as ratios to each
# other too (TLS costs: bytes of records and handshake, time).
#
# Env: STRATO_BIN (default target/release/strato, built if missing), OUT,
#      RATE (default 100mbit), IMAGE_MIB, CHANGED_MIB.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
strato_bin
need_tools qemu-storage-daemon qemu-img ip tc
OUT=${OUT:-$ROOT/target/bench-migrate-disk}
mkdir -p "$OUT"

PYTHONPATH="$ROOT/benches" python3 - "$STRATO" "$OUT" "${RATE:-100mbit}" "${IMAGE_MIB:-256}" "${CHANGED_MIB:-16}" <<'PY'
import hashlib, json, os, subprocess, sys, time
from benchlib import *
strato, out, rate, image_mib, changed_mib = sys.argv[1:6]
image_mib, changed_mib = int(image_mib), int(changed_mib)
sites = Sites("dmb", 233, wan="tbf", rate=rate)
NS_S, NS_D, SIP, DIP = sites.src, sites.dst, sites.sip, sites.dip
procs = []

def spawn(ns, args, log, env=None):
    p = subprocess.Popen(["ip", "netns", "exec", ns] + args, stdout=subprocess.PIPE,
                         stderr=open(log, "w"), stdin=subprocess.DEVNULL, text=True,
                         env={**os.environ, **(env or {})})
    procs.append(p)
    return p

def cleanup():
    stop(procs, grace=0)
    sites.down()

netns_up, link_bytes = sites.up, sites.wan_bytes

def mirror(sq, host, port, export):
    sq.cmd("blockdev-add", **{"driver": "nbd", "node-name": "tgt",
           "server": {"type": "inet", "host": host, "port": str(port)}, "export": export})
    t0 = time.time()
    sq.cmd("blockdev-mirror", **{"job-id": "m", "device": "src", "target": "tgt", "sync": "full"})
    deadline = time.time() + 1800
    while True:
        jobs = [j for j in sq.cmd("query-block-jobs") if j["device"] == "m"]
        if not jobs:
            raise SystemExit(f"mirror failed: {sq.events}")
        if jobs[0]["ready"]:
            break
        if time.time() > deadline:
            raise SystemExit("mirror never ready")
        time.sleep(0.1)
    sq.cmd("block-job-cancel", device="m")
    while any(j["device"] == "m" for j in sq.cmd("query-block-jobs")):
        time.sleep(0.05)
    secs = time.time() - t0
    sq.cmd("blockdev-del", **{"node-name": "tgt"})
    return secs

def md5_image(path, fmt):
    raw = path + ".flat"
    sh("qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, raw)
    h = hashlib.md5()
    with open(raw, "rb") as f:
        for b in iter(lambda: f.read(MIB), b""):
            h.update(b)
    os.remove(raw)
    return h.hexdigest()

def storage_daemon(ns, name, disk, extra):
    qmp = f"{out}/{name}.qmp"
    if os.path.exists(qmp):
        os.remove(qmp)
    p = spawn(ns, ["qemu-storage-daemon",
                   "--blockdev", f"driver=file,node-name={name}-file,filename={disk}",
                   "--blockdev", f"driver=qcow2,node-name={name},file={name}-file",
                   "--chardev", f"socket,id=qmp0,path={qmp},server=on,wait=off",
                   "--monitor", "chardev=qmp0"] + extra, f"{out}/{name}.log")
    return p, Qmp(qmp)

try:
    netns_up()
    base = f"{out}/base.raw"
    rnd = image_mib * 3 // 4
    with open(base, "wb") as f:
        f.write(os.urandom(rnd * MIB))
        f.truncate(image_mib * MIB)
    src_disk = f"{out}/src.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", src_disk)
    changes = f"{out}/changes.bin"
    with open(changes, "wb") as f:
        f.write(os.urandom(changed_mib * MIB))
    sh("qemu-io", "-f", "qcow2", "-c", f"write -s {changes} {8 * MIB} {changed_mib * MIB}", src_disk)
    want = md5_image(src_disk, "qcow2")

    # The destination site, holding the image in a block-indexed bucket.
    data = f"{out}/site"
    sh("rm", "-rf", data)
    env = {"STRATO_DATA_DIR": data, "STRATO_ACCESS_KEY": AK, "STRATO_SECRET_KEY": SK}
    subprocess.run([strato, "mb", "--block-index", "images"], check=True, env={**os.environ, **env}, capture_output=True)
    subprocess.run([strato, "put", base, "images/base.raw", "--chunking", "block"], check=True,
                   env={**os.environ, **env}, capture_output=True)
    site = spawn(NS_D, [strato, "serve", "--listen", f"{DIP}:9000"], f"{out}/site.log", env)
    wait_line(site, "serving", "strato serve")
    site_flags = ["--site", f"http://{DIP}:9000", "--access-key", AK, "--secret-key", SK]

    # Mutual TLS: the receiver's certificate names the address the sender dials.
    certs = json.loads(subprocess.run([strato, "--json", "migrate", "certs", f"{out}/ca", DIP, SIP],
                                      check=True, capture_output=True, text=True).stdout)
    def tls_flags(host):
        h = next(h for h in certs["hosts"] if h["host"] == host)
        return ["--tls-cert", h["cert"], "--tls-key", h["key"], "--tls-ca", certs["ca"]]
    # --no-store on the receivers: the second strato run must not find the
    # first one's changed blocks at the site (each run's own blocks are
    # distinct, so this costs the first run nothing).
    link = {"strato": (["--insecure"], ["--insecure", "--no-store"]),
            "strato-tls": (tls_flags(SIP), tls_flags(DIP) + ["--no-store"])}

    results = {}
    for mode in ("qemu-plain", "strato", "strato-tls"):
        dst_disk = f"{out}/dst-{mode}.qcow2"
        sh("qemu-img", "create", "-q", "-f", "qcow2", dst_disk, f"{image_mib}M")
        nbd_host = DIP if mode == "qemu-plain" else "127.0.0.1"
        dp, dq = storage_daemon(NS_D, "dst", dst_disk, [
            "--nbd-server", f"addr.type=inet,addr.host={nbd_host},addr.port=10809",
            "--export", "type=nbd,id=e0,node-name=dst,name=disk0,writable=on"])
        sp, sq = storage_daemon(NS_S, "src", src_disk, [])
        before = link_bytes()
        if mode == "qemu-plain":
            secs = mirror(sq, DIP, 10809, "disk0")
            report = None
        else:
            send_link, recv_link = link[mode]
            recv = spawn(NS_D, [strato, "--json", "migrate", "disk-recv", "--listen", f"{DIP}:7100",
                                "--nbd", "127.0.0.1:10809", "--export", "disk0",
                                "--report", f"{out}/disk-recv.json"] + recv_link + site_flags,
                         f"{out}/disk-recv.log")
            wait_line(recv, "listening", "disk-recv")
            send = spawn(NS_S, [strato, "--json", "migrate", "disk-send", "--listen", "127.0.0.1:7101",
                                "--to", f"{DIP}:7100", "--report", f"{out}/disk-send.json"]
                         + send_link + site_flags, f"{out}/disk-send.log")
            wait_line(send, "NBD export", "disk-send")
            secs = mirror(sq, "127.0.0.1", 7101, "strato")
            if send.wait(timeout=120) != 0 or recv.wait(timeout=120) != 0:
                raise SystemExit("a disk agent failed; see disk-send.log / disk-recv.log")
            report = json.load(open(f"{out}/disk-send.json"))
        wan = link_bytes() - before
        for p in (sp, dp):
            p.terminate(); p.wait(timeout=30)
        got = md5_image(dst_disk, "qcow2")
        if got != want:
            raise SystemExit(f"{mode}: destination disk differs ({got} vs {want})")
        results[mode] = {"wan_bytes": wan, "seconds": round(secs, 2), "verified": True,
                         "blocks": report and report["blocks"]}
        print(f"{mode}: WAN {wan / MIB:.1f} MiB, {secs:.1f} s, verified", file=sys.stderr)
    p, s, t = results["qemu-plain"], results["strato"], results["strato-tls"]
    results["ratio_wan"] = round(s["wan_bytes"] / p["wan_bytes"], 3)
    results["ratio_time"] = round(s["seconds"] / p["seconds"], 3)
    results["tls_vs_plain_wan"] = round(t["wan_bytes"] / s["wan_bytes"], 3)
    results["tls_vs_plain_time"] = round(t["seconds"] / s["seconds"], 3)
    json.dump(results, open(f"{out}/results.json", "w"), indent=2)
    print(json.dumps(results, indent=2))
finally:
    cleanup()
PY
