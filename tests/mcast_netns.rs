//! `strato mcast send` / `strato mcast recv` across network namespaces
//! joined by a bridge (multicast through the bridge, snooping off): byte-
//! identical copies, repair under loss, a killed and a frozen receiver,
//! a late joiner, forged and foreign datagrams on the group; signed
//! sessions: a rogue sender's image refused, forged control frames dropped.
//!
//! Loss: this machine's kernel has no `netem` qdisc, so link loss is made
//! with nftables `numgen random` drops on the netdev ingress hooks (the
//! sender's bridge port for its link, each receiver's eth0 for its own).
//! Only UDP is dropped; the TCP control channel is left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod chain_util;
mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chain_util::lan::Lan;
use common::*;

const GROUP: &str = "239.77.0.1:7500";
const KEYS: (&str, &str) = (
    "STRTESTACCESSKEY0001",
    "test-secret-key-0123456789abcdefghijklmn",
);

/// Runs a command, failing the test if it fails or outlives 20 s.
fn run(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A background process with its output in files; killed by PID on drop.
struct Proc {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded) for `text` on stderr.
    fn wait_stderr(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.stderr().contains(text) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("exited ({st}) before printing {text:?}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no {text:?} within {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Exit status and the JSON it printed; fails the test after `limit`.
    fn finish(&mut self, limit: Duration) -> (bool, serde_json::Value) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("still running after {limit:?}: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let json = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
        (status.success(), json)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        run(Command::new("kill").args([sig, &self.pid().to_string()]));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Namespaces h0 (sender), h1..hN joined by a bridge in a namespace of its
/// own; everything removed on drop (processes by PID first).
struct Topology {
    lan: Lan,
    procs: Vec<Proc>,
    dir: tempfile::TempDir,
}

impl Topology {
    fn new(tag: &str, hosts: usize) -> Topology {
        Topology {
            lan: Lan::new("stm", tag, hosts, true),
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn bridge(&self) -> String {
        self.lan.bridge()
    }

    fn host(&self, i: usize) -> String {
        self.lan.host(i)
    }

    fn addr(&self, i: usize) -> String {
        self.lan.addr(i)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `strato ARGS` inside host i's namespace.
    fn strato(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new(require_tool("ip"));
        c.args(["netns", "exec", &self.host(i), strato_bin()])
            .env_remove("STRATO_CONFIG")
            .env("STRATO_DATA_DIR", self.path(&format!("data{i}")))
            .env("STRATO_ACCESS_KEY", KEYS.0)
            .env("STRATO_SECRET_KEY", KEYS.1)
            .args(args);
        c
    }

    /// The console's transfers JSON of the repository at `endpoint` (host
    /// 0's loopback), signed in through the form with curl as a browser would.
    fn console_transfers(&self, endpoint: &str) -> serde_json::Value {
        let curl = require_tool("curl");
        let jar = self.path("console-cookies");
        let in_ns = |args: &[&str]| {
            let out = Command::new(require_tool("ip"))
                .args(["netns", "exec", &self.host(0)])
                .arg(&curl)
                .args(["-s", "--max-time", "20", "-b"])
                .arg(&jar)
                .arg("-c")
                .arg(&jar)
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "curl {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let form = in_ns(&[&format!("{endpoint}/ui/signin")]);
        let at = form
            .find("name=\"signin_token\" value=\"")
            .expect("sign-in form")
            + 27;
        let token = &form[at..at + 64];
        in_ns(&[
            "-d",
            &format!(
                "access_key={}&secret_key={}&signin_token={token}",
                KEYS.0, KEYS.1
            ),
            &format!("{endpoint}/ui/signin"),
        ]);
        let json = in_ns(&[&format!("{endpoint}/ui/transfers.json")]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    }

    /// Drops `permille`/1000 of the UDP packets entering `device` in `ns`.
    fn lose(&self, ns: &str, device: &str, permille: u32) {
        let nft = require_tool("nft");
        let rules = format!(
            "table netdev loss {{\n  chain lossy {{\n    type filter hook ingress device {device} priority 0;\n    \
             meta l4proto udp numgen random mod 1000 < {permille} drop\n  }}\n}}\n"
        );
        let f = self.path(&format!("nft-{ns}-{device}"));
        std::fs::write(&f, rules).unwrap();
        run(Command::new(require_tool("ip"))
            .args(["netns", "exec", ns])
            .arg(nft)
            .arg("-f")
            .arg(&f));
    }

    /// `strato serve` in host 0 on its loopback; returns the endpoint.
    fn serve(&mut self) -> String {
        let mut p = Proc::spawn(
            self.strato(0, &["serve", "--listen", "127.0.0.1:0"]),
            self.dir.path(),
            "serve",
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let endpoint = loop {
            let out = std::fs::read_to_string(&p.stdout).unwrap_or_default();
            if let Some(l) = out.lines().find(|l| l.starts_with("strato serving S3 at ")) {
                break l.trim_start_matches("strato serving S3 at ").to_string();
            }
            assert!(Instant::now() < deadline, "serve: {}", p.stderr());
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("serve exited {st}: {}", p.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.procs.push(p);
        endpoint
    }

    /// Starts the sender in host 0 and waits until its control channel
    /// listens.
    fn sender(&self, image: &str, extra: &[&str]) -> Proc {
        let listen = format!("{}:7401", self.addr(0));
        let mut args = vec![
            "--json",
            "mcast",
            "send",
            image,
            "--group",
            GROUP,
            "--interface",
            &listen[..listen.len() - 5],
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let mut p = Proc::spawn(self.strato(0, &args), self.dir.path(), "sender");
        p.wait_stderr("control channel on", Duration::from_secs(20));
        p
    }

    /// A receiver in host i: "out" writes a file, "store" a store. It runs
    /// `--insecure` (these tests are about the protocol; the signed ones
    /// use `receiver_with`).
    fn receiver(&self, i: usize, sink: &str) -> Proc {
        let sender = format!("{}:7401", self.addr(0));
        self.receiver_with(i, sink, &sender, &["--insecure"])
    }

    fn receiver_with(&self, i: usize, sink: &str, sender: &str, extra: &[&str]) -> Proc {
        let target = self.path(&format!("{sink}{i}"));
        let mut args = vec![
            "--json", "mcast", "recv", "--group", GROUP, "--sender", sender,
        ];
        args.extend_from_slice(extra);
        let flag = format!("--{sink}");
        args.push(&flag);
        let target = target.to_str().unwrap().to_string();
        args.push(&target);
        Proc::spawn(self.strato(i, &args), self.dir.path(), &format!("recv{i}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first; the namespaces go when `lan` drops after this.
        for p in &mut self.procs {
            p.kill();
        }
    }
}

/// An image with a zero run and a repeated region (dedup + holes), put
/// into host 0's store as bkt/disk.img.
fn make_image(t: &Topology, mib: usize, seed: u64) -> Vec<u8> {
    let mut data = random_bytes(mib << 20, seed);
    data[(2 << 20)..(4 << 20)].fill(0);
    let (a, b) = data.split_at_mut(8 << 20);
    b[..(1 << 20)].copy_from_slice(&a[(5 << 20)..(6 << 20)]);
    let src = t.path("img");
    std::fs::write(&src, &data).unwrap();
    run(&mut t.strato(0, &["mb", "bkt"]));
    run(&mut t.strato(
        0,
        &[
            "put",
            src.to_str().unwrap(),
            "bkt/disk.img",
            "--chunking",
            "block",
        ],
    ));
    data
}

fn image_from_store(t: &Topology, dir: &Path) -> PathBuf {
    let out = t.path(&format!(
        "get-{}",
        dir.file_name().unwrap().to_string_lossy()
    ));
    run(Command::new(strato_bin())
        .env_remove("STRATO_CONFIG")
        .arg("--data-dir")
        .arg(dir)
        .args(["get", "bkt/disk.img"])
        .arg(&out));
    out
}

fn outcomes(report: &serde_json::Value) -> Vec<(String, String, String)> {
    report["receivers"]
        .as_array()
        .unwrap_or_else(|| panic!("no receivers in {report}"))
        .iter()
        .map(|r| {
            (
                r["addr"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn four_receivers_get_identical_copies() {
    let mut t = Topology::new("a", 5);
    let data = make_image(&t, 24, 11);
    let endpoint = t.serve();
    // Host 4's store already holds the first 6 MiB of the image under
    // another name: those chunks are announced at join and never waited for.
    let seed = t.path("seed");
    std::fs::write(&seed, &data[..6 << 20]).unwrap();
    let store4 = t.path("store4");
    for args in [
        vec!["--data-dir", store4.to_str().unwrap(), "mb", "bkt"],
        vec![
            "--data-dir",
            store4.to_str().unwrap(),
            "put",
            seed.to_str().unwrap(),
            "bkt/old.img",
            "--chunking",
            "block",
        ],
    ] {
        run(Command::new(strato_bin())
            .env_remove("STRATO_CONFIG")
            .args(&args));
    }

    let mut sender = t.sender(
        "s3://bkt/disk.img",
        &[
            "--endpoint",
            &endpoint,
            "--rate",
            "200mbit",
            "--expect",
            "4",
        ],
    );
    let mut rx: Vec<Proc> = (1..=3).map(|i| t.receiver(i, "out")).collect();
    rx.push(t.receiver(4, "store"));
    let (ok, report) = sender.finish(LIMIT);
    assert!(ok, "{}\n{report}", sender.stderr());
    for (addr, outcome, _) in outcomes(&report) {
        assert_eq!(outcome, "complete", "{addr}: {report}");
    }
    assert_eq!(report["joined"], 4, "{report}");
    // The sender reported the end to the repository: its console lists the
    // multicast session with all four receivers complete.
    let view = t.console_transfers(&endpoint);
    let session = view["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "multicast")
        .unwrap_or_else(|| panic!("no multicast session: {view}"));
    let nodes = session["outcome"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no outcome: {session}"));
    assert_eq!(nodes.len(), 4, "{session}");
    assert!(nodes.iter().all(|n| n["ok"] == true), "{session}");
    let want = md5_hex(&data);
    for (i, r) in rx.iter_mut().enumerate() {
        let (ok, rep) = r.finish(LIMIT);
        assert!(ok, "receiver {}: {}", i + 1, r.stderr());
        assert_eq!(rep["size"], data.len() as u64, "{rep}");
        let img = if i < 3 {
            PathBuf::from(rep["out"].as_str().unwrap())
        } else {
            assert!(rep["held_chunks"].as_u64().unwrap() > 0, "{rep}");
            image_from_store(&t, &store4)
        };
        assert_eq!(md5_file(&img), want, "receiver {}", i + 1);
    }
    // The zero run stayed a hole in the --out files.
    let out1 = t.path("out1");
    let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out1).unwrap());
    assert!(
        blocks * 512 < data.len() as u64 - (1 << 20),
        "{blocks} blocks"
    );
    // No temporary files left behind.
    for f in std::fs::read_dir(t.dir.path()).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(!name.contains("strato-mcast"), "left behind: {name}");
    }
    for f in std::fs::read_dir(&store4).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".mcast-"), "scratch left behind: {name}");
    }
    drop(rx);
    drop(sender);
    drop(t);
    let probe = format!("stm{}a", std::process::id());
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&probe),
        "namespaces left behind"
    );
}

#[test]
fn loss_on_every_link_is_repaired() {
    let t = Topology::new("b", 5);
    let data = make_image(&t, 16, 12);
    // 1 % on the sender's link (every receiver loses those), 1 % more on
    // each receiver's link, 5 % on host 2's.
    t.lose(&t.bridge(), "p0", 10);
    for i in 1..=4 {
        t.lose(&t.host(i), "eth0", if i == 2 { 50 } else { 10 });
    }
    let mut sender = t.sender("bkt/disk.img", &["--rate", "200mbit", "--expect", "4"]);
    let mut rx: Vec<Proc> = (1..=4).map(|i| t.receiver(i, "out")).collect();
    let (ok, report) = sender.finish(LIMIT);
    assert!(ok, "{}\n{report}", sender.stderr());
    let rounds = report["rounds"].as_array().unwrap();
    assert!(rounds.len() >= 2, "no repair round under loss: {report}");
    let repaired: u64 = rounds[1..]
        .iter()
        .map(|r| r["pieces"].as_u64().unwrap())
        .sum();
    assert!(repaired > 0, "{report}");
    // Repairs re-send what was lost, not the image.
    assert!(
        repaired < rounds[0]["pieces"].as_u64().unwrap() / 4,
        "{report}"
    );
    let want = md5_hex(&data);
    for (i, r) in rx.iter_mut().enumerate() {
        let (ok, _) = r.finish(LIMIT);
        assert!(ok, "receiver {}: {}", i + 1, r.stderr());
        assert_eq!(md5_file(&t.path(&format!("out{}", i + 1))), want);
    }
}

#[test]
fn heavy_loss_halves_the_rate_within_bounds() {
    let t = Topology::new("f", 3);
    let data = make_image(&t, 12, 16);
    // Host 2 loses 40 % of what reaches it: above the 20 % threshold, so
    // the next round goes at half the rate, never below --min-rate.
    t.lose(&t.host(2), "eth0", 400);
    let mut sender = t.sender(
        "bkt/disk.img",
        &["--rate", "200mbit", "--min-rate", "80mbit", "--expect", "2"],
    );
    let mut rx: Vec<Proc> = (1..=2).map(|i| t.receiver(i, "out")).collect();
    let (ok, report) = sender.finish(LIMIT);
    assert!(ok, "{}\n{report}", sender.stderr());
    let rates: Vec<u64> = report["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rate_bits"].as_u64().unwrap())
        .collect();
    assert_eq!(rates[0], 200_000_000, "{report}");
    assert!(rates.len() >= 2, "{report}");
    assert_eq!(
        rates[1], 100_000_000,
        "halved after a 40 % loss round: {report}"
    );
    assert!(rates.iter().all(|r| *r >= 80_000_000), "{report}");
    let want = md5_hex(&data);
    for (i, r) in rx.iter_mut().enumerate() {
        let (ok, _) = r.finish(LIMIT);
        assert!(ok, "{}", r.stderr());
        assert_eq!(md5_file(&t.path(&format!("out{}", i + 1))), want);
    }
}

#[test]
fn dead_and_frozen_receivers_are_evicted_and_reported() {
    let t = Topology::new("c", 5);
    let data = make_image(&t, 16, 13);
    // 40 Mbit/s: the first round takes ~3.5 s, time to kill one receiver
    // mid-way and freeze another.
    let mut sender = t.sender(
        "bkt/disk.img",
        &[
            "--rate",
            "40mbit",
            "--expect",
            "4",
            "--round-timeout",
            "2",
            "--max-stalled-rounds",
            "2",
        ],
    );
    let mut rx: Vec<Proc> = (1..=4).map(|i| t.receiver(i, "out")).collect();
    // Wait (bounded) until host 1 has received a few MiB, then kill it and
    // freeze host 2 (its control connection stays open but never answers).
    let part = t.path(".out1.strato-mcast");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = std::fs::metadata(&part)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        if got > 3 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "receiver 1 never got data");
        std::thread::sleep(Duration::from_millis(10));
    }
    rx[0].signal("-KILL");
    rx[1].signal("-STOP");
    let (ok, report) = sender.finish(LIMIT);
    assert!(
        !ok,
        "the sender must fail when receivers were evicted: {report}"
    );
    let o = outcomes(&report);
    assert_eq!(o.len(), 4, "{report}");
    let by_host = |h: usize| {
        o.iter()
            .find(|(a, _, _)| *a == t.addr(h))
            .unwrap_or_else(|| panic!("host {h} missing: {report}"))
            .clone()
    };
    let (_, outcome, reason) = by_host(1);
    assert_eq!(outcome, "evicted");
    assert!(reason.contains("control connection"), "{reason}");
    let (_, outcome, reason) = by_host(2);
    assert_eq!(outcome, "evicted");
    assert!(reason.contains("no answer"), "{reason}");
    for h in [3, 4] {
        assert_eq!(by_host(h).1, "complete", "{report}");
    }
    assert!(sender.stderr().contains("evicted"), "{}", sender.stderr());
    rx[1].signal("-CONT");
    let (ok, _) = rx[1].finish(LIMIT);
    assert!(!ok, "an evicted receiver must fail");
    assert!(rx[1].stderr().contains("evicted"), "{}", rx[1].stderr());
    assert!(
        !t.path("out2").exists(),
        "an evicted receiver left an image"
    );
    let want = md5_hex(&data);
    for i in [2, 3] {
        let (ok, _) = rx[i].finish(LIMIT);
        assert!(ok, "{}", rx[i].stderr());
        assert_eq!(md5_file(&t.path(&format!("out{}", i + 1))), want);
    }
}

#[test]
fn late_joiner_catches_up_by_repair() {
    let t = Topology::new("d", 4);
    let data = make_image(&t, 16, 14);
    let mut sender = t.sender("bkt/disk.img", &["--rate", "40mbit", "--expect", "2"]);
    let mut rx: Vec<Proc> = (1..=2).map(|i| t.receiver(i, "out")).collect();
    let part = t.path(".out1.strato-mcast");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&part)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0)
        < 2 << 20
    {
        assert!(Instant::now() < deadline, "no data within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    rx.push(t.receiver(3, "store"));
    let (ok, report) = sender.finish(LIMIT);
    assert!(ok, "{}\n{report}", sender.stderr());
    let late = report["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["addr"].as_str().unwrap().starts_with(&t.addr(3)))
        .unwrap_or_else(|| panic!("late joiner missing: {report}"))
        .clone();
    assert_eq!(late["outcome"], "complete", "{report}");
    assert!(late["joined_round"].as_u64().unwrap() >= 1, "{report}");
    let want = md5_hex(&data);
    for r in &mut rx {
        let (ok, _) = r.finish(LIMIT);
        assert!(ok, "{}", r.stderr());
    }
    for i in 1..=2 {
        assert_eq!(md5_file(&t.path(&format!("out{i}"))), want);
    }
    assert_eq!(md5_file(&image_from_store(&t, &t.path("store3"))), want);
}

/// Sniffs one datagram of the session from the group, then floods it with
/// garbage, wrong magic/version/session, out-of-range pieces, and forged
/// pieces (right session, valid positions, wrong bytes) for chunks the
/// sender has not reached yet.
const INJECTOR: &str = r#"
import os, random, socket, struct, sys, time
grp, port = sys.argv[1], int(sys.argv[2])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
rx.bind((grp, port))
rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
              socket.inet_aton(grp) + socket.inet_aton(sys.argv[3]))
rx.settimeout(20)
d = rx.recv(2048)
magic, ver, kind, session, index, off = struct.unpack(">HBBIII", d[:16])
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[3]))
r = random.Random(7)
sent = 0
for n in range(20000):
    k = n % 6
    if k == 0:
        p = os.urandom(r.randrange(0, 1500))
    elif k == 1:
        p = struct.pack(">HBBIII", 0x1234, 1, 0, session, 0, 0) + os.urandom(1456)
    elif k == 2:
        p = struct.pack(">HBBIII", magic, 9, 0, session, 0, 0) + os.urandom(1456)
    elif k == 3:
        p = struct.pack(">HBBIII", magic, ver, 0, session ^ 1, index + 60, 0) + os.urandom(1456)
    elif k == 4:
        p = struct.pack(">HBBIII", magic, ver, 0, session, 0xFFFFFF, 0) + os.urandom(1456)
    else:
        p = struct.pack(">HBBIII", magic, ver, 0, session, index + 60 + (n // 6) % 60, 0) + os.urandom(1456)
    tx.sendto(p, (grp, port))
    sent += 1
    if n % 200 == 0:
        time.sleep(0.002)
print(sent)
"#;

#[test]
fn foreign_and_forged_datagrams_are_ignored() {
    let t = Topology::new("e", 5);
    let data = make_image(&t, 16, 15);
    let mut sender = t.sender("bkt/disk.img", &["--rate", "40mbit", "--expect", "3"]);
    let (grp, port) = GROUP.split_once(':').unwrap();
    let mut inj = Command::new(require_tool("ip"));
    inj.args(["netns", "exec", &t.host(4)])
        .arg(require_tool("python3"))
        .args(["-c", INJECTOR, grp, port, &t.addr(4)]);
    let mut injector = Proc::spawn(inj, t.dir.path(), "injector");
    let mut rx: Vec<Proc> = (1..=2).map(|i| t.receiver(i, "out")).collect();
    rx.push(t.receiver(3, "store"));
    let (ok, report) = sender.finish(LIMIT);
    assert!(ok, "{}\n{report}", sender.stderr());
    let (ok, _) = injector.finish(LIMIT);
    assert!(ok, "injector: {}", injector.stderr());
    let want = md5_hex(&data);
    let (mut foreign, mut failures) = (0, 0);
    for (i, r) in rx.iter_mut().enumerate() {
        let (ok, rep) = r.finish(LIMIT);
        assert!(ok, "{}", r.stderr());
        foreign += rep["progress"]["foreign"].as_u64().unwrap();
        failures += rep["progress"]["verify_failures"].as_u64().unwrap();
        let img = if i < 2 {
            t.path(&format!("out{}", i + 1))
        } else {
            image_from_store(&t, &t.path("store3"))
        };
        assert_eq!(md5_file(&img), want, "receiver {}", i + 1);
    }
    assert!(foreign > 0, "no foreign datagram was counted: {report}");
    // Forged pieces at valid positions were caught by the chunk ids and
    // repaired, never written into an image.
    assert!(failures > 0, "no forged chunk was detected: {report}");
}

/// A control client that is not a receiver of the session: HELLO, then an
/// unsigned JOIN and a signed-looking NACK of everything under a made-up
/// tag (postcard by hand: variant index, then fields).
const FORGER: &str = r#"
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
def frame(b): s.sendall(struct.pack(">I", len(b)) + b)
frame(bytes([0, 2]))                       # Hello { protocol: 2 }
n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
s.recv(n, socket.MSG_WAITALL)              # the Session
frame(bytes([1, 0]))                       # Join { held: [] }, unsigned
nack = bytes([2, 0, 1, 0, 0xA0, 0x8D, 0x06]) + bytes(7)
frame(bytes([4, 1, len(nack)]) + nack + bytes([0x42]) * 32)
time.sleep(1)
print("sent")
"#;

#[test]
fn signed_sessions_refuse_a_rogue_sender_and_drop_forged_control_frames() {
    let t = Topology::new("s", 4);
    let data = make_image(&t, 12, 17);
    let key = run(&mut t.strato(0, &["trust-key"])).trim().to_string();
    // Host 3 is a rogue: a repository of its own with another image under
    // the same name, its sessions signed by its own key.
    let rogue_img = t.path("rogue-img");
    std::fs::write(&rogue_img, random_bytes(4 << 20, 99)).unwrap();
    run(&mut t.strato(3, &["mb", "bkt"]));
    run(&mut t.strato(3, &["put", rogue_img.to_str().unwrap(), "bkt/disk.img"]));
    let rogue_listen = format!("{}:7401", t.addr(3));
    let mut rogue = Proc::spawn(
        t.strato(
            3,
            &[
                "--json",
                "mcast",
                "send",
                "bkt/disk.img",
                "--group",
                GROUP,
                "--interface",
                &t.addr(3),
                "--listen",
                &rogue_listen,
                "--rate",
                "40mbit",
                "--expect",
                "1",
                "--join-timeout",
                "15",
            ],
        ),
        t.dir.path(),
        "rogue",
    );
    rogue.wait_stderr("control channel on", Duration::from_secs(20));
    let mut fooled = t.receiver_with(2, "out", &rogue_listen, &["--trust-key", &key]);
    let (ok, _) = fooled.finish(LIMIT);
    assert!(!ok, "a receiver took the rogue's session");
    let err = fooled.stderr();
    assert!(err.contains("does not trust"), "{err}");
    assert!(!t.path("out2").exists(), "the rogue's session wrote a file");
    rogue.kill();

    // The honest session, with a forger on the control channel meanwhile.
    let mut sender = t.sender("bkt/disk.img", &["--rate", "40mbit", "--expect", "2"]);
    let mut forge = Command::new(require_tool("ip"));
    forge
        .args(["netns", "exec", &t.host(3)])
        .arg(require_tool("python3"))
        .args(["-c", FORGER, &t.addr(0), "7401"]);
    let mut forger = Proc::spawn(forge, t.dir.path(), "forger");
    let (ok, _) = forger.finish(LIMIT);
    assert!(ok, "forger: {}", forger.stderr());
    let mut rx: Vec<Proc> = (1..=2)
        .map(|i| {
            let sender = format!("{}:7401", t.addr(0));
            t.receiver_with(i, "out", &sender, &["--trust-key", &key])
        })
        .collect();
    let (ok, report) = sender.finish(LIMIT);
    assert!(
        ok,
        "{}
{report}",
        sender.stderr()
    );
    assert!(
        report["forged_control_frames"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert_eq!(report["joined"], 2, "{report}");
    let want = md5_hex(&data);
    for (i, r) in rx.iter_mut().enumerate() {
        let (ok, _) = r.finish(LIMIT);
        assert!(ok, "receiver {}: {}", i + 1, r.stderr());
        assert_eq!(md5_file(&t.path(&format!("out{}", i + 1))), want);
    }
}

#[test]
fn bad_arguments_are_refused() {
    let s = Strato::new("redb");
    let err = s.fails(&[
        "mcast",
        "recv",
        "--group",
        "10.0.0.1:7500",
        "--sender",
        "127.0.0.1",
        "--out",
        "x",
    ]);
    assert!(err.contains("not a multicast address"), "{err}");
    let err = s.fails(&[
        "mcast", "send", "bkt/k", "--group", GROUP, "--rate", "fast", "--expect", "1",
    ]);
    assert!(err.contains("invalid rate"), "{err}");
    let err = s.fails(&[
        "mcast", "send", "bkt/k", "--group", GROUP, "--rate", "1g", "--expect", "0",
    ]);
    assert!(err.contains("--expect"), "{err}");
    let err = s.fails(&[
        "mcast",
        "recv",
        "--group",
        GROUP,
        "--sender",
        "127.0.0.1",
        "--out",
        "x",
        "--store",
        "y",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    // A missing object fails before anything is sent or created.
    s.ok(&["mb", "bkt"]);
    let err = s.fails(&[
        "mcast",
        "send",
        "bkt/nothing",
        "--group",
        GROUP,
        "--rate",
        "1g",
        "--expect",
        "1",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(err.contains("bkt/nothing"), "{err}");
    // Nothing listening: the receiver fails cleanly and creates no file.
    let out = s.dir.path().join("never.img");
    let err = s.fails(&[
        "mcast",
        "recv",
        "--group",
        GROUP,
        "--sender",
        "127.0.0.1:1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!out.exists());
}
