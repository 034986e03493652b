//! Two network namespaces (a source and a destination site) joined by a
//! `strato-wanem` process: its two TAP devices are moved one into each
//! namespace. Everything is torn down on drop: the emulator and whatever
//! still runs in the namespaces are killed by PID, the namespaces deleted.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::require_tool;

/// The emulator is its own workspace member (`tools/wanem`), so cargo does
/// not hand this package its binary path; it sits beside `strato` in the same
/// target directory. `cargo test --workspace` builds it; a lone
/// `cargo test --test X` may not have, so build it once here if it is missing.
pub fn wanem_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_strato")).with_file_name("strato-wanem");
        if !bin.exists() {
            let cargo = option_env!("CARGO").unwrap_or("cargo");
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "strato-wanem"])
                .status()
                .expect("running cargo build -p strato-wanem");
            assert!(status.success(), "cargo build -p strato-wanem failed");
        }
        assert!(bin.exists(), "{} missing after building it", bin.display());
        bin.to_string_lossy().into_owned()
    })
}

/// Run `ip` and require success.
pub fn ip(args: &[&str]) {
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

pub struct WanemLink {
    pub src: String,
    pub dst: String,
    pub src_ip: String,
    pub dst_ip: String,
    /// Device names inside the namespaces (source side, destination side).
    pub src_dev: String,
    pub dst_dev: String,
    child: Option<Child>,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl WanemLink {
    /// Start `strato-wanem` with `args` (e.g. `--delay-ms 10 --rate 100mbit
    /// --duration 60`) and wire its TAPs into two fresh namespaces named
    /// after this process and `tag`. TAP a faces the source site.
    pub fn new(tag: &str, args: &[&str]) -> WanemLink {
        let pid = std::process::id();
        let dir = tempfile::tempdir().expect("tempdir");
        let report = dir.path().join("wanem.json");
        let (tap_a, tap_b) = (format!("wa{pid}{tag}"), format!("wb{pid}{tag}"));
        let mut child = Command::new(wanem_bin())
            .args(["--tap-a", &tap_a, "--tap-b", &tap_b, "--report"])
            .arg(&report)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting strato-wanem");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .and_then(std::result::Result::ok)
            .unwrap_or_default();
        assert_eq!(
            first,
            format!("tap-a={tap_a} tap-b={tap_b}"),
            "unexpected first line from strato-wanem"
        );
        // Keep draining stdout (the final report) so it never blocks.
        std::thread::spawn(move || for _ in lines {});
        let net = pid % 250 + 1;
        let mut link = WanemLink {
            src: format!("swan{pid}{tag}s"),
            dst: format!("swan{pid}{tag}d"),
            src_ip: format!("10.233.{net}.1"),
            dst_ip: format!("10.233.{net}.2"),
            src_dev: tap_a.clone(),
            dst_dev: tap_b.clone(),
            child: Some(child),
            report,
            _dir: dir,
        };
        ip(&["netns", "add", &link.src]);
        ip(&["netns", "add", &link.dst]);
        let (src, dst) = (link.src.clone(), link.dst.clone());
        for (ns, dev, addr) in [(&src, &tap_a, &link.src_ip), (&dst, &tap_b, &link.dst_ip)] {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        link.src_dev = tap_a;
        link.dst_dev = tap_b;
        link
    }

    /// `ip netns exec NS` as a command prefix (for QEMU specs).
    pub fn prefix(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
    }

    /// A command run inside namespace `ns`.
    pub fn exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(require_tool("ip"));
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Bytes that crossed the link in both directions, counted at the
    /// source site's device (what a WAN provider would bill).
    pub fn wan_bytes(&self) -> u64 {
        let mut total = 0;
        for counter in ["tx_bytes", "rx_bytes"] {
            let out = Self::exec(&self.src, "cat")
                .arg(format!(
                    "/sys/class/net/{}/statistics/{counter}",
                    self.src_dev
                ))
                .output()
                .expect("reading counters");
            let text = String::from_utf8_lossy(&out.stdout);
            total += text
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("counter {counter}: {text:?}"));
        }
        total
    }

    pub fn emulator_pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Stop the emulator with SIGTERM; returns what [`Self::wait_exit`] does.
    pub fn terminate(&mut self, within: Duration) -> (bool, serde_json::Value) {
        let pid = self.emulator_pid().expect("emulator already waited for");
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -TERM {pid}");
        self.wait_exit(within)
    }

    /// Wait for the emulator to stop by itself (its `--duration`); returns
    /// its exit success and its final report.
    pub fn wait_exit(&mut self, within: Duration) -> (bool, serde_json::Value) {
        let mut child = self.child.take().expect("emulator already waited for");
        let end = Instant::now() + within;
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for strato-wanem") {
                break s;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("strato-wanem did not stop by itself within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&self.report).unwrap_or_default();
        let report = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("strato-wanem report {text:?}: {e}"));
        (status.success(), report)
    }
}

impl Drop for WanemLink {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
