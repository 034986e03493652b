#!/usr/bin/env bash
# Live migration of idle TCG guests over an emulated WAN: QEMU plain,
# QEMU multifd + zstd, strato dedup, strato dedup + zstd, and strato with
# the destination site pre-seeded (the guest image in a block-indexed
# bucket, then an earlier guest migrated in), for 1, 2 and 4 VMs migrated
# at once (one migration group).
#
# WAN (WAN=wanem, the default): source and destination namespaces joined by
# strato-wanem, the userspace emulator (this kernel has no netem): RATE
# (default 100mbit) and DELAY_MS (default 10) each way, so 20 ms round
# trips, with a LIMIT-frame queue (default 420 frames = 50 ms at 100 Mbit/s,
# like the tbf latency below). WAN=tbf: a veth pair shaped with tbf, no
# delay (the earlier setup). Bytes are the source end's counters (both
# directions: pages, ids, site queries, TCP/IP and Ethernet headers), time is
# from the first `migrate` to the last guest running at the destination,
# downtime is QEMU's own (max over the VMs).
#
# Guests: 256 MiB, the same kernel/initramfs, 8 MiB of seed-specific data
# each (scripts/build-guest.sh), idle. One run per cell.
#
# `migrate_bench.sh captures` instead captures the migration streams of
# CAPTURES (default 16) distinct idle guests once (`migrate "exec:cat >
# FILE"`, kept in OUT/captures), replays REPLAY (default "1 2 4 8 16") of
# them at once through `strato migrate send` -> the WAN -> `strato migrate
# recv` as one group against a fresh site, checks every rebuilt stream
# against its capture, and compares the WAN bytes to a QEMU multifd + zstd
# anchor: zstd -1 of the captures (QEMU's multifd zstd level), calibrated by
# the live multifd + zstd runs of OUT/results.json at the same guests (run
# the live table first).
#
# Env: STRATO_BIN (default target/release/strato, built if missing; the
#      emulator is strato-wanem beside it), OUT, VMS (default "1 2 4"),
#      MODES (default all), WAN, RATE, DELAY_MS, LIMIT, CAPTURES, REPLAY,
#      SEND_EXTRA (more `strato migrate send` flags, e.g. "--batch-pages 128"),
#      SWITCHOVER_BW (bytes/s: QEMU's avail-switchover-bandwidth for the
#      strato modes), TCP_WMEM (the source site's net.ipv4.tcp_wmem).
# Downtime: QEMU's (source side, query-migrate) and "paused", the guest's
# pause: the source's STOP event to the destination's RESUME event.
# Switchover timeline (strato modes, the VM paused longest), ms after the
# source's STOP event: when the sender read QEMU's switchover marker, its
# last byte on the WAN, the receiver's last byte into QEMU, RESUME; with
# the stream bytes still queued at STOP, the WAN bytes and pages sent
# after it and the site round trips after it (the agents' reports).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if [ "${WAN:-wanem}" = wanem ]; then strato_bin wanem; else strato_bin; fi
need_tools qemu-system-x86_64 ip tc zstd
GUEST=$("$ROOT/scripts/build-guest.sh")
OUT=${OUT:-$ROOT/target/bench-migrate}
mkdir -p "$OUT"

PYTHONPATH="$ROOT/benches" python3 - "$STRATO" "$GUEST" "$OUT" "${VMS:-1 2 4}" "${MODES:-plain multifd-zstd dedup dedup-zstd seeded}" "${RATE:-100mbit}" \
  "${WAN:-wanem}" "$WANEM" "${DELAY_MS:-10}" "${LIMIT:-420}" "${1:-live}" "${CAPTURES:-16}" "${REPLAY:-1 2 4 8 16}" <<'PY'
import json, os, subprocess, sys, time
from benchlib import *
strato, guest, out, vms_list, modes, rate, wan, wanem, delay_ms, limit, bench, captures, replay = sys.argv[1:14]
vms_list = [int(v) for v in vms_list.split()]
modes = modes.split()
captures = int(captures)
replay = [int(v) for v in replay.split()]
if bench not in ("live", "captures"):
    raise SystemExit(f"the argument must be live or captures (got {bench})")
sites = Sites("smb", 232, wan=wan, rate=rate, wanem=wanem, delay_ms=delay_ms, limit=limit, report_dir=out)
NS_S, NS_D, SIP, DIP = sites.src, sites.dst, sites.sip, sites.dip
pid = os.getpid()

def netns_up():
    sites.up(tcp_wmem=os.environ.get("TCP_WMEM"))

netns_down, wan_bytes = sites.down, sites.wan_bytes

def qemu(d, ns, seed, incoming=None):
    return qemu_guest(d, ns, guest, seed, incoming)

wait_shell = guest_shell

def site_start(d, seed_image=False):
    env = dict(os.environ, STRATO_DATA_DIR=f"{d}/site", STRATO_ACCESS_KEY=AK, STRATO_SECRET_KEY=SK)
    env.pop("STRATO_CONFIG", None)
    if seed_image:
        # The guest's image (kernel, initramfs) in a block-indexed bucket:
        # its 4 KiB blocks resolve page ids too.
        subprocess.run([strato, "mb", "--block-index", "images"], env=env, check=True, capture_output=True)
        for f in ("vmlinuz", "initramfs.cpio"):
            subprocess.run([strato, "put", "--chunking", "block", f"{guest}/{f}", f"images/{f}"],
                           env=env, check=True, capture_output=True)
    p = subprocess.Popen(["ip", "netns", "exec", NS_D, strato, "serve", "--listen", f"{DIP}:9000"],
                         env=env, stdout=subprocess.PIPE, stderr=open(f"{d}/serve.log", "w"), text=True)
    line = p.stdout.readline()
    if "serving" not in line:
        raise SystemExit(f"strato serve: {line}")
    return p

def site_flags():
    return f"--site http://{DIP}:9000 --access-key {AK} --secret-key {SK}"


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
                inc = (f"exec:{strato} migrate recv --insecure --listen {DIP}:{port} {site_flags()} "
                       f"--report {d}/recv{i}.json 2>>{d}/recv{i}.log")
                uri = (f"exec:{strato} migrate send --insecure --to {DIP}:{port} {site_flags()} --group {group} "
                       f"--vm vm{i} {extra} --report {d}/send{i}.json 2>>{d}/send{i}.log")
            p, q = qemu(f"{d}/dst{i}", NS_D, seeds[i], inc); procs.append(p); dsts.append(q)
            if os.environ.get("SWITCHOVER_BW") and mode not in ("plain", "multifd-zstd"):
                # What the WAN really drains at switchover (bytes/s of
                # QEMU's stream), instead of QEMU's estimate from how fast
                # the sender's buffers took the stream.
                srcs[i].cmd("migrate-set-parameters",
                            **{"avail-switchover-bandwidth": int(os.environ["SWITCHOVER_BW"])})
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
        # QEMU's downtime (source side, query-migrate), and the pause the
        # guest sees: the source's STOP event to the destination's RESUME
        # event (QEMU timestamps both with the host clock).
        downtimes, running = [None] * n, [False] * n
        end = time.time() + 900
        while None in downtimes or not all(running):
            if time.time() > end:
                raise SystemExit(f"{mode}: migration timed out")
            for i in range(n):
                if downtimes[i] is None:
                    info = srcs[i].cmd("query-migrate")
                    if info.get("status") in ("failed", "cancelled"):
                        raise SystemExit(f"{mode} vm{i}: {info}")
                    if info.get("status") == "completed":
                        downtimes[i] = info.get("downtime", 0)
                if not running[i]:
                    running[i] = dsts[i].cmd("query-status")["status"] == "running"
            time.sleep(0.02)
        pauses = [round((event_at(dsts[i], "RESUME") - event_at(srcs[i], "STOP")) * 1000)
                  for i in range(n)]
        paused = max(pauses)
        reports = []
        timeline = None
        if mode not in ("plain", "multifd-zstd"):
            for i in range(n):
                end = time.time() + 120
                while not os.path.exists(f"{d}/send{i}.json"):
                    if time.time() > end:
                        raise SystemExit(f"no report: {open(f'{d}/send{i}.log').read()}")
                    time.sleep(0.05)
                reports.append(f"{d}/send{i}.json")
            i = pauses.index(paused)
            timeline = switchover_timeline(d, i, event_at(srcs[i], "STOP"), paused)
        secs = time.time() - t0
        time.sleep(0.5)
        return wan_bytes() - before, secs, max(downtimes), reports, paused, timeline

    finally:
        stop(procs)

def event_at(q, name):
    """QEMU's timestamp of event `name`; QMP is read (bounded, 5 s) until the
    event is there: it may come after the status answer that showed it."""
    end = time.time() + 5
    while not any(e["event"] == name for e in q.events):
        if time.time() > end:
            raise SystemExit(f"QEMU sent no {name} event")
        q.cmd("query-status")
        time.sleep(0.01)
    return q.event_time(name)

def switchover_timeline(d, i, stop_s, paused):
    """VM i's switchover from its agents' reports, ms after QEMU's STOP."""
    end = time.time() + 60
    while not os.path.exists(f"{d}/recv{i}.json") and time.time() < end:
        time.sleep(0.05)
    try:
        send = json.load(open(f"{d}/send{i}.json"))
        recv = json.load(open(f"{d}/recv{i}.json"))
    except (OSError, ValueError):
        return None
    sw = send.get("switchover")
    if not sw:
        return None
    at = lambda ms: round(ms - stop_s * 1000)
    return {"seen": at(sw["stop_seen_unix_ms"]), "last_sent": at(sw["last_byte_unix_ms"]),
            "last_out": at(recv.get("last_output_unix_ms", 0)) if recv.get("last_output_unix_ms") else None,
            "resume": paused, "queued_mib": sw["queued_bytes"] / 2**20,
            "wan_mib": sw["wan_bytes"] / 2**20, "pages": sw["stream_pages"],
            "full": sw["pages_full"], "by_id": sw["pages_by_id"],
            "site_rtts": sw["site_round_trips"], "given_up": sw["lookups_given_up"],
            "pulls": sw["pulls"], "waited": recv.get("pages_waited", 0)}

def timeline_line(t):
    return (f"    switchover: marker read +{t['seen']} ms, last byte sent +{t['last_sent']} ms, "
            f"last byte into QEMU +{t['last_out']} ms, RESUME +{t['resume']} ms; queued at STOP "
            f"{t['queued_mib']:.2f} MiB; after STOP: {t['pages']} pages ({t['full']} in full, {t['by_id']} by id), "
            f"WAN {t['wan_mib']:.2f} MiB, site round trips {t['site_rtts']}, answers given up {t['given_up']}, "
            f"pulls {t['pulls']}, pages waited for at the site {t['waited']}")

def group_report(reps, d):
    g = json.loads(subprocess.run([strato, "--json", "migrate", "report", *reps],
                                  check=True, capture_output=True, text=True).stdout)
    json.dump(g, open(f"{d}/group.json", "w"), indent=1)
    return g["all_verified"]

def live():
    rows = []
    netns_up()
    try:
        for n in vms_list:
            for mode in modes:
                d = f"{out}/n{n}-{mode}"
                subprocess.run(["rm", "-rf", d]); os.makedirs(d)
                site = site_start(d, seed_image=(mode == "seeded")) if mode not in ("plain", "multifd-zstd") else None
                try:
                    if mode == "seeded":
                        # An earlier guest (another seed) migrated into this site first.
                        os.makedirs(f"{d}/earlier")
                        migrate_set(f"{d}/earlier", 1, "dedup-zstd", [99], f"early{n}", site)
                    b, s, dt, reps, paused, tl = migrate_set(d, n, "dedup-zstd" if mode == "seeded" else mode,
                                                     list(range(1, n + 1)), f"g{n}{mode}{pid}", site)
                    verified = group_report(reps, d) if reps else None
                    rows.append((n, mode, b, s, dt, verified, paused, tl))
                    print(f"{n} VMs {mode:<13} {b/2**20:8.1f} MiB {s:7.1f} s downtime {dt} ms "
                          f"paused {paused} ms verified {verified}",
                          file=sys.stderr, flush=True)
                    if tl:
                        print(timeline_line(tl), file=sys.stderr, flush=True)
                finally:
                    stop([site])
    finally:
        netns_down()
    # Merge into earlier results (runs of a few cells keep the others).
    path = f"{out}/results-{wan}.json"
    old = json.load(open(path)) if os.path.exists(path) else []
    keep = {(r[0], r[1]) for r in rows}
    rows = sorted([r for r in old if (r[0], r[1]) not in keep] + rows,
                  key=lambda r: (r[0], ["plain", "multifd-zstd", "dedup", "dedup-zstd", "seeded"].index(r[1])
                                 if r[1] in ["plain", "multifd-zstd", "dedup", "dedup-zstd", "seeded"] else 9))
    json.dump(rows, open(path, "w"), indent=1)
    print(f"WAN: {wan}, {rate}" + (f", {delay_ms} ms each way, queue {limit} frames" if wan == "wanem" else ", no delay"))
    print(f"{'VMs':>3} {'mode':<13} {'WAN MiB':>8} {'vs plain':>8} {'vs mfd+zstd':>11} {'time s':>7} {'t vs mfd':>8} "
          f"{'downtime ms':>11} {'paused ms':>9} verified")
    base = {(r[0], r[1]): r for r in rows}
    for n, mode, b, s, dt, v, *rest in rows:
        pz = rest[0] if rest else "-"
        p = base.get((n, "plain")); z = base.get((n, "multifd-zstd"))
        rp = f"{b/p[2]:8.2f}" if p else f"{'-':>8}"
        rz = f"{b/z[2]:11.2f}" if z else f"{'-':>11}"
        tz = f"{s/z[3]:8.2f}" if z else f"{'-':>8}"
        print(f"{n:>3} {mode:<13} {b/2**20:8.1f} {rp} {rz} {s:7.1f} {tz} {dt:>11} {pz:>9} {'' if v is None else v}")
        if len(rest) > 1 and rest[1]:
            print(timeline_line(rest[1]))


def capture_all(cdir):
    """Migration streams of `captures` idle guests (seeds 1..N) into files,
    four guests at a time; kept across runs (a .done file marks each)."""
    os.makedirs(cdir, exist_ok=True)
    todo = [i for i in range(1, captures + 1) if not os.path.exists(f"{cdir}/cap{i}.done")]
    for k in range(0, len(todo), 4):
        batch = todo[k:k + 4]
        procs, qmps = [], []
        try:
            for i in batch:
                p, q = qemu(f"{cdir}/vm{i}", NS_S, i); procs.append(p); qmps.append(q)
            for i in batch:
                wait_shell(f"{cdir}/vm{i}")
            time.sleep(3)  # idle, as in the live runs
            for i, q in zip(batch, qmps):
                q.cmd("migrate", uri=f"exec:cat > {cdir}/cap{i}.qemu")
            for i, q in zip(batch, qmps):
                end = time.time() + 600
                while (st := q.cmd("query-migrate").get("status")) not in ("completed", "failed", "cancelled"):
                    if time.time() > end:
                        raise SystemExit("capture timed out")
                    time.sleep(0.1)
                if st != "completed":
                    raise SystemExit(f"capture {i}: {st}")
                zs = int(subprocess.run(f"zstd -1 -T1 -c {cdir}/cap{i}.qemu | wc -c", shell=True, check=True,
                                        capture_output=True, text=True).stdout)
                json.dump({"bytes": os.path.getsize(f"{cdir}/cap{i}.qemu"), "zstd1": zs,
                           "md5": md5_file(f"{cdir}/cap{i}.qemu")}, open(f"{cdir}/cap{i}.done", "w"))
                print(f"captured guest {i}: {os.path.getsize(f'{cdir}/cap{i}.qemu')/2**20:.1f} MiB, "
                      f"zstd -1 {zs/2**20:.1f} MiB", file=sys.stderr, flush=True)
        finally:
            stop(procs)
    return {i: json.load(open(f"{cdir}/cap{i}.done")) for i in range(1, captures + 1)}

def replay_set(d, n, caps, cdir):
    """Replay captures 1..n at once through the agents; (bytes, secs, verified)."""
    site = site_start(d)
    procs = []
    try:
        flags = site_flags().split()
        extra = os.environ.get("SEND_EXTRA", "").split()
        recvs, sends = [], []
        for i in range(1, n + 1):
            recvs.append(subprocess.Popen(
                ["ip", "netns", "exec", NS_D, strato, "migrate", "recv", "--insecure", "--listen", f"{DIP}:{7100 + i}", *flags,
                 "--report", f"{d}/recv{i}.json"],
                stdin=subprocess.DEVNULL, stdout=open(f"{d}/out{i}", "wb"), stderr=open(f"{d}/recv{i}.log", "w")))
        procs += recvs
        time.sleep(0.5)
        before, t0 = wan_bytes(), time.time()
        for i in range(1, n + 1):
            sends.append(subprocess.Popen(
                ["ip", "netns", "exec", NS_S, strato, "migrate", "send", "--insecure", "--to", f"{DIP}:{7100 + i}", *flags,
                 "--group", f"cap{n}g{pid}", "--vm", f"vm{i}", *extra, "--report", f"{d}/send{i}.json"],
                stdin=open(f"{cdir}/cap{i}.qemu", "rb"), stdout=subprocess.DEVNULL,
                stderr=open(f"{d}/send{i}.log", "w")))
        procs += sends
        for p in sends + recvs:
            if p.wait(1800) != 0:
                raise SystemExit(f"replay of {n}: an agent failed; see {d}/*.log")
        secs = time.time() - t0
        time.sleep(0.5)
        b = wan_bytes() - before
        same = all(md5_file(f"{d}/out{i}") == caps[i]["md5"] for i in range(1, n + 1))
        for i in range(1, n + 1):
            os.remove(f"{d}/out{i}")
        verified = group_report([f"{d}/send{i}.json" for i in range(1, n + 1)], d)
        return b, secs, same and verified
    finally:
        stop(procs + [site])

def captured():
    if max(replay) > captures:
        raise SystemExit(f"REPLAY asks for {max(replay)} guests, CAPTURES is {captures}")
    cdir = f"{out}/captures"
    netns_up()
    rows = []
    try:
        caps = capture_all(cdir)
        for n in replay:
            d = f"{out}/replay-n{n}"
            subprocess.run(["rm", "-rf", d]); os.makedirs(d)
            b, s, ok = replay_set(d, n, caps, cdir)
            rows.append((n, b, s, ok))
            print(f"replay {n:>2} VMs: {b/2**20:8.1f} MiB {s:7.1f} s rebuilt streams identical {ok}",
                  file=sys.stderr, flush=True)
    finally:
        netns_down()
    json.dump(rows, open(f"{out}/replay-{wan}.json", "w"), indent=1)
    # The QEMU anchor: live multifd + zstd bytes and time per zstd -1 byte of
    # the same guests' captures, from the live runs at n = 1, 2, 4.
    live_rows = json.load(open(f"{out}/results-{wan}.json")) if os.path.exists(f"{out}/results-{wan}.json") else []
    calib = []
    for n, mode, b, s, *_ in live_rows:
        if mode == "multifd-zstd" and n <= captures:
            z = sum(caps[i]["zstd1"] for i in range(1, n + 1))
            calib.append((n, b / z, s / b))
    if not calib:
        print("no live multifd-zstd rows: run the live table first for the anchor", file=sys.stderr)
    for n, f, _ in calib:
        print(f"calibration n={n}: live multifd+zstd WAN bytes = {f:.3f} x zstd -1 of the captures")
    fs = sorted(f for _, f, _ in calib)
    ts = sorted(t for _, _, t in calib)
    f = fs[len(fs) // 2] if fs else None
    t = ts[len(ts) // 2] if ts else None
    if fs:
        print(f"anchor factor {f:.3f} (spread {fs[0]:.3f}-{fs[-1]:.3f}); anchor time {t*2**20:.4f} s per MiB")
    print(f"{'VMs':>3} {'strato MiB':>10} {'time s':>7} {'capt MiB':>9} {'zstd MiB':>9} {'anchor MiB':>10} "
          f"{'vs anchor':>9} {'anchor s':>8} {'t vs anchor':>11} verified")
    for n, b, s, ok in rows:
        raw = sum(caps[i]["bytes"] for i in range(1, n + 1))
        z = sum(caps[i]["zstd1"] for i in range(1, n + 1))
        if f:
            a = z * f
            at = a * t
            print(f"{n:>3} {b/2**20:10.1f} {s:7.1f} {raw/2**20:9.1f} {z/2**20:9.1f} {a/2**20:10.1f} {b/a:9.2f} "
                  f"{at:8.1f} {s/at:11.2f} {ok}")
        else:
            print(f"{n:>3} {b/2**20:10.1f} {s:7.1f} {raw/2**20:9.1f} {z/2**20:9.1f} {'-':>10} {b/z:9.2f} "
                  f"{'-':>8} {'-':>11} {ok}")

if bench == "live":
    live()
else:
    captured()
PY
