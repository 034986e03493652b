//! Live migration over an emulated WAN: source and destination sites in
//! their own network namespaces joined by a veth pair shaped to 100 Mbit/s
//! in each direction. This machine's kernel has no `netem` qdisc, so the
//! rate is shaped with `tbf` and no delay is added. The destination site's
//! `strato serve` and the receiver live in the destination namespace; the
//! sender reaches both across the WAN.

mod common;
mod migrate_util;
mod qemu_util;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use migrate_util::*;
use qemu_util::*;

/// Two namespaces and a shaped veth between them; deleted on drop (after
/// killing, by PID, whatever still runs inside).
struct Wan {
    src: String,
    dst: String,
    src_ip: String,
    dst_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new(require_tool("ip"))
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Wan {
    fn new(tag: &str) -> Wan {
        require_tool("tc");
        let pid = std::process::id();
        let net = pid % 250 + 1;
        let wan = Wan {
            src: format!("smig{pid}{tag}s"),
            dst: format!("smig{pid}{tag}d"),
            src_ip: format!("10.231.{net}.1"),
            dst_ip: format!("10.231.{net}.2"),
        };
        ip(&["netns", "add", &wan.src]);
        ip(&["netns", "add", &wan.dst]);
        ip(&[
            "-n", &wan.src, "link", "add", "wan0", "type", "veth", "peer", "name", "wan1", "netns",
            &wan.dst,
        ]);
        for (ns, dev, addr) in [
            (&wan.src, "wan0", &wan.src_ip),
            (&wan.dst, "wan1", &wan.dst_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            let out = Command::new(require_tool("tc"))
                .args(["-n", ns, "qdisc", "add", "dev", dev, "root", "tbf"])
                .args(["rate", "100mbit", "burst", "64kbit", "latency", "50ms"])
                .output()
                .expect("tc");
            assert!(
                out.status.success(),
                "tc: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        wan
    }

    fn prefix(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        for ns in [&self.src, &self.dst] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `strato serve` of the destination site inside its namespace.
struct Site {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

const ACCESS: &str = "STRTESTACCESSKEY0001";
const SECRET: &str = "test-secret-key-0123456789abcdefghijklmn";

impl Site {
    fn start(ns: &str, addr: &str) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, strato_bin(), "serve", "--listen"])
            .arg(format!("{addr}:9000"))
            .env("STRATO_DATA_DIR", dir.path().join("data"))
            .env("STRATO_ACCESS_KEY", ACCESS)
            .env("STRATO_SECRET_KEY", SECRET)
            .env_remove("STRATO_CONFIG")
            .stdout(Stdio::piped())
            .spawn()
            .expect("strato serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let endpoint = first
            .strip_prefix("strato serving S3 at ")
            .unwrap_or_else(|| panic!("unexpected first line from strato serve: {first:?}"))
            .to_string();
        std::thread::spawn(move || for _ in lines {});
        Site {
            child,
            endpoint,
            _dir: dir,
        }
    }

    fn flags(&self) -> String {
        format!(
            "--site {} --access-key {ACCESS} --secret-key {SECRET}",
            self.endpoint
        )
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn guest_migrates_over_a_shaped_wan() {
    let wan = Wan::new("a");
    let site = Site::start(&wan.dst, &wan.dst_ip);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = VmSpec::new("wan", 13);
    spec.prefix = Wan::prefix(&wan.src);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    let md5 = src.md5("/tmp/data");
    let mut dspec = spec.clone();
    dspec.prefix = Wan::prefix(&wan.dst);
    let listen = format!("{}:7000", wan.dst_ip);
    let recv_report = dir.path().join("recv.json");
    let send_report = dir.path().join("send.json");
    let mut dst = Qemu::start(
        &dspec,
        &dir.path().join("dst"),
        Some(&recv_uri_flags(&listen, &site.flags(), &recv_report, "")),
    );
    let info = src.migrate(&send_uri_flags(
        &listen,
        &site.flags(),
        "wan",
        &send_report,
        "",
    ));
    assert_eq!(info.status, "completed", "{}", agent_log(&send_report));
    dst.wait_status("running", Duration::from_secs(120));
    assert_eq!(dst.md5("/tmp/data"), md5);
    let r = read_report(&send_report);
    assert_eq!(r["verified"], true);
    let wan_bytes = r["wan"]["total"].as_u64().unwrap();
    let seconds = r["seconds"].as_f64().unwrap();
    eprintln!(
        "over the WAN: stream {} bytes, WAN {wan_bytes} bytes, {seconds:.2} s, downtime {:?} ms",
        r["stream_bytes"], info.downtime
    );
    // 100 Mbit/s is 12.5 MB/s: the time shows the link really was shaped.
    assert!(
        seconds >= wan_bytes as f64 / 12.5e6 * 0.8,
        "{wan_bytes} bytes in {seconds} s is faster than the emulated link"
    );
}
