//! `strato-wanem`, the userspace WAN emulator: two network namespaces
//! joined by it. Delay shows in ping round trips, the rate bounds a bulk TCP
//! transfer (whose bytes arrive intact), the loss flag drops about its
//! share, the emulator stops by itself after `--duration`, and bad flags
//! are refused before any device exists. These are functional checks of
//! the emulation with generous bands, not speed claims.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod wanem_util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use wanem_util::*;

/// `busybox ping` from the source namespace; returns (received, min, avg) in ms.
fn ping(link: &WanemLink, count: u32) -> (u32, f64, f64) {
    let out = WanemLink::exec(&link.src, require_tool("busybox"))
        .args(["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
        .arg(&link.dst_ip)
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received = text
        .lines()
        .find_map(|l| {
            l.split(", ")
                .find_map(|p| p.strip_suffix(" packets received"))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no ping summary in {text:?}"));
    let (min, avg) = text
        .lines()
        .find_map(|l| l.strip_prefix("round-trip min/avg/max = "))
        .map(|v| {
            let f: Vec<f64> = v
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            (f[0], f[1])
        })
        .unwrap_or((f64::NAN, f64::NAN));
    (received, min, avg)
}

#[test]
fn ping_round_trip_is_the_configured_delay() {
    let mut link = WanemLink::new(
        "p",
        &["--delay-ms", "10", "--rate", "100mbit", "--duration", "20"],
    );
    let (received, min, avg) = ping(&link, 10);
    eprintln!("20 ms configured: {received}/10 replies, min {min} ms, avg {avg} ms");
    assert_eq!(received, 10);
    assert!(
        (18.0..40.0).contains(&min) && (18.0..40.0).contains(&avg),
        "round trip min {min} avg {avg} ms for a 20 ms link"
    );
    // Asymmetric delays add up: 5 ms out, 25 ms back.
    let mut asym = WanemLink::new(
        "q",
        &[
            "--delay-ab-ms",
            "5",
            "--delay-ba-ms",
            "25",
            "--duration",
            "20",
        ],
    );
    let (received, min, avg) = ping(&asym, 10);
    eprintln!("5 + 25 ms configured: {received}/10 replies, min {min} ms, avg {avg} ms");
    assert_eq!(received, 10);
    assert!(
        (28.0..50.0).contains(&min) && (28.0..50.0).contains(&avg),
        "round trip min {min} avg {avg} ms for 5 + 25 ms"
    );
    for l in [&mut link, &mut asym] {
        let (ok, report) = l.terminate(Duration::from_secs(10));
        assert!(ok, "strato-wanem failed: {report}");
    }
}

/// Receives one TCP connection, prints `bytes md5 seconds(first byte → EOF)`.
const TCP_SINK: &str = r#"
import hashlib, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(60)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(60)
h, n, t0 = hashlib.md5(), 0, None
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    if t0 is None:
        t0 = time.monotonic()
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), time.monotonic() - (t0 or time.monotonic()), flush=True)
"#;

const TCP_SOURCE: &str = r#"
import socket, sys
data = open(sys.argv[3], "rb").read()
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(data)
c.close()
"#;

#[test]
fn bulk_tcp_is_held_to_the_rate_and_arrives_intact() {
    let mut link = WanemLink::new(
        "t",
        &["--delay-ms", "10", "--rate", "20mbit", "--duration", "120"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("payload");
    let len = 6 << 20;
    let data = write_random(&file, len, 41);
    let mut sink = WanemLink::exec(&link.dst, python())
        .args(["-c", TCP_SINK, &link.dst_ip, "5001"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tcp sink");
    let mut lines = BufReader::new(sink.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next().and_then(std::result::Result::ok).as_deref(),
        Some("listening")
    );
    let sent = WanemLink::exec(&link.src, python())
        .args(["-c", TCP_SOURCE, &link.dst_ip, "5001"])
        .arg(&file)
        .status()
        .expect("tcp source");
    assert!(sent.success(), "sender failed");
    let result = lines
        .next()
        .and_then(std::result::Result::ok)
        .expect("sink printed no result");
    let _ = sink.wait();
    let f: Vec<&str> = result.split_whitespace().collect();
    let (n, md5, secs): (usize, &str, f64) = (
        f[0].parse().expect("bytes"),
        f[1],
        f[2].parse().expect("seconds"),
    );
    let goodput = n as f64 * 8.0 / secs / 1e6;
    eprintln!("{n} bytes in {secs:.2} s: {goodput:.1} Mbit/s of payload over a 20 Mbit/s link");
    assert_eq!(n, len);
    assert_eq!(md5, md5_hex(&data), "bytes changed on the way");
    // Payload is less than the frames carrying it, so goodput above the
    // configured rate (plus 5 % for timer slack) means the link was not shaped.
    assert!(
        goodput <= 21.0,
        "{goodput:.1} Mbit/s through a 20 Mbit/s link"
    );
    // SIGTERM stops it cleanly, with its counters written.
    let (ok, report) = link.terminate(Duration::from_secs(10));
    assert!(ok);
    let ab = &report["directions"][0];
    assert!(
        ab["bytes_out"].as_u64().unwrap_or(0) > len as u64,
        "emulator counted less than the payload: {report}"
    );
}

/// Counts UDP datagrams until 2 s pass without one; prints the count.
const UDP_SINK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
s.settimeout(10)
n = 0
try:
    while True:
        s.recv(2048)
        n += 1
        s.settimeout(2)
except socket.timeout:
    pass
print(n, flush=True)
"#;

const UDP_SOURCE: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 100, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.001)
"#;

#[test]
fn loss_flag_drops_about_its_share() {
    let mut link = WanemLink::new(
        "l",
        &[
            "--delay-ms",
            "1",
            "--loss-ab",
            "25",
            "--seed",
            "7",
            "--duration",
            "30",
        ],
    );
    // A static neighbour entry: ARP frames are not at the mercy of the loss.
    let out = Command::new(require_tool("ip"))
        .args(["-n", &link.dst, "link", "show", &link.dst_dev])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("mac of the destination device")
        .to_string();
    ip(&[
        "-n",
        &link.src,
        "neigh",
        "replace",
        &link.dst_ip,
        "lladdr",
        &mac,
        "dev",
        &link.src_dev,
    ]);
    let mut sink = WanemLink::exec(&link.dst, python())
        .args(["-c", UDP_SINK, &link.dst_ip, "5002"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("udp sink");
    let mut lines = BufReader::new(sink.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next().and_then(std::result::Result::ok).as_deref(),
        Some("listening")
    );
    let sent = 1000;
    let ok = WanemLink::exec(&link.src, python())
        .args(["-c", UDP_SOURCE, &link.dst_ip, "5002", &sent.to_string()])
        .status()
        .expect("udp source");
    assert!(ok.success());
    let received: u32 = lines
        .next()
        .and_then(std::result::Result::ok)
        .and_then(|l| l.trim().parse().ok())
        .expect("sink count");
    let _ = sink.wait();
    let lost_share = 1.0 - received as f64 / sent as f64;
    eprintln!("{received}/{sent} datagrams arrived through 25 % loss ({lost_share:.3} lost)");
    assert!(
        (0.17..0.33).contains(&lost_share),
        "lost {lost_share:.3} for 25 % loss"
    );
    let (ok, report) = link.terminate(Duration::from_secs(10));
    assert!(ok);
    let dirs = &report["directions"];
    assert!(dirs[0]["lost"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(dirs[1]["lost"], 0, "loss was set for a→b only: {report}");
}

#[test]
fn emulator_stops_by_itself_and_its_devices_go_away() {
    let mut link = WanemLink::new("e", &["--duration", "1"]);
    let started = std::time::Instant::now();
    let (ok, report) = link.wait_exit(Duration::from_secs(15));
    assert!(ok, "exit status");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        report["directions"].as_array().map(std::vec::Vec::len),
        Some(2)
    );
    let out = Command::new(require_tool("ip"))
        .args(["-n", &link.src, "link", "show", &link.src_dev])
        .output()
        .expect("ip link");
    assert!(
        !out.status.success(),
        "TAP {} still exists after the emulator exited",
        link.src_dev
    );
}

#[test]
fn bad_flags_are_refused_before_any_device_exists() {
    let name = format!("wx{}", std::process::id());
    for (flags, words) in [
        (vec!["--loss", "150", "--duration", "5"], "loss"),
        (vec!["--rate", "fast", "--duration", "5"], "rate"),
        (vec!["--delay-ms=-3", "--duration", "5"], "delay"),
        (vec!["--limit", "0", "--duration", "5"], "limit"),
        (vec!["--duration", "0"], "duration"),
    ] {
        let out = Command::new(wanem_bin())
            .args(["--tap-a", &name])
            .args(&flags)
            .output()
            .expect("strato-wanem");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(err.contains(words), "{flags:?}: unclear error {err:?}");
        let exists = Command::new(require_tool("ip"))
            .args(["link", "show", &name])
            .output()
            .expect("ip link")
            .status
            .success();
        assert!(!exists, "{flags:?} left device {name} behind");
    }
    let out = Command::new(wanem_bin())
        .args(["--tap-a", "bad/name", "--duration", "1"])
        .output()
        .expect("strato-wanem");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid TAP name"));
}
