//! Live migration over an emulated WAN: source and destination sites in
//! their own network namespaces joined by `strato-wanem` (this machine's
//! kernel has no `netem` qdisc), 100 Mbit/s and 10 ms each way (20 ms round
//! trip). The destination site's `strato serve` and the receiver live in
//! the destination namespace; the sender reaches both across the WAN.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod migrate_util;
mod qemu_util;
mod wanem_util;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use migrate_util::*;
use qemu_util::*;
use wanem_util::*;

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
        let first = lines
            .next()
            .and_then(std::result::Result::ok)
            .unwrap_or_default();
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
fn guest_migrates_over_an_emulated_wan() {
    let link = WanemLink::new(
        "m",
        &[
            "--rate",
            "100mbit",
            "--delay-ms",
            "10",
            "--limit",
            "420",
            "--duration",
            "600",
        ],
    );
    let site = Site::start(&link.dst, &link.dst_ip);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = VmSpec::new("wan", 13);
    spec.prefix = WanemLink::prefix(&link.src);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    let md5 = src.md5("/tmp/data");
    let mut dspec = spec.clone();
    dspec.prefix = WanemLink::prefix(&link.dst);
    let listen = format!("{}:7000", link.dst_ip);
    let recv_report = dir.path().join("recv.json");
    let send_report = dir.path().join("send.json");
    let mut dst = Qemu::start(
        &dspec,
        &dir.path().join("dst"),
        Some(&recv_uri_flags(&listen, &site.flags(), &recv_report, "")),
    );
    let before = link.wan_bytes();
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
    let link_bytes = link.wan_bytes() - before;
    let r = read_report(&send_report);
    assert_eq!(r["verified"], true);
    let wan_bytes = r["wan"]["total"].as_u64().unwrap();
    let seconds = r["seconds"].as_f64().unwrap();
    eprintln!(
        "over the WAN: stream {} bytes, agent WAN {wan_bytes} bytes, link {link_bytes} bytes, \
         {seconds:.2} s, downtime {:?} ms",
        r["stream_bytes"], info.downtime
    );
    // Everything the agents sent crossed the emulated link (plus headers,
    // site queries and their answers).
    assert!(
        link_bytes >= wan_bytes,
        "link counted {link_bytes} bytes, agents sent {wan_bytes}"
    );
    // 100 Mbit/s is 12.5 MB/s: the time shows the link really was shaped.
    assert!(
        seconds >= wan_bytes as f64 / 12.5e6 * 0.8,
        "{wan_bytes} bytes in {seconds} s is faster than the emulated link"
    );
}
