//! Running `strato chain-agent` processes for the chain tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::strato_bin;

pub mod lan;

/// What a node keeps received images in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Store,
    Files,
}

/// One agent process, killed (by its PID) when dropped.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    pub kind: Kind,
}

impl Agent {
    /// Starts `strato chain-agent --listen LISTEN (--store|--out-dir) DIR`,
    /// optionally through a prefix (`ip netns exec NS`), and waits (bounded)
    /// for the address it prints.
    /// Off loopback the agent runs `--insecure` (these tests are about the
    /// chain, not about trust; tests/trust_sessions.rs is).
    pub fn start(prefix: &[&str], listen: &str, kind: Kind, dir: &Path) -> Agent {
        Agent::start_with(prefix, listen, kind, dir, &["--insecure"])
    }

    /// As [`Agent::start`], with extra agent flags (`--trust-key K`...).
    pub fn start_with(
        prefix: &[&str],
        listen: &str,
        kind: Kind,
        dir: &Path,
        extra: &[&str],
    ) -> Agent {
        let flag = match kind {
            Kind::Store => "--store",
            Kind::Files => "--out-dir",
        };
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(strato_bin());
                c
            }
            None => Command::new(strato_bin()),
        };
        cmd.args(["chain-agent", "--listen", listen, flag])
            .arg(dir)
            .args(extra)
            .env_remove("STRATO_CONFIG")
            .env("STRATO_DATA_DIR", dir.join("unused-data-dir"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("starting chain-agent");
        let stdout = child.stdout.take().expect("agent stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            // Keep draining so the agent never blocks on a full pipe.
            for _ in lines {}
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chain-agent did not report its address within 20 s");
        };
        let addr = line
            .strip_prefix("chain-agent listening on ")
            .unwrap_or_else(|| panic!("unexpected agent output {line:?}"))
            .trim()
            .to_string();
        Agent {
            child,
            addr,
            dir: dir.to_path_buf(),
            kind,
        }
    }

    pub fn local(kind: Kind, dir: &Path) -> Agent {
        Agent::start(&[], "127.0.0.1:0", kind, dir)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Graceful stop (SIGTERM) so the store lock is released; SIGKILL if it
    /// takes more than 10 s.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.kill();
    }

    /// The image as this node holds it: `strato get` from its store (agent
    /// stopped first, it holds the store lock), or the file in its out-dir.
    pub fn image(&mut self, bucket_key: &str, scratch: &Path) -> PathBuf {
        match self.kind {
            Kind::Files => {
                let name = bucket_key.rsplit('/').next().unwrap();
                self.dir.join(name)
            }
            Kind::Store => {
                self.stop();
                let out = scratch.join(format!("get-{}", self.pid()));
                let o = Command::new(strato_bin())
                    .env_remove("STRATO_CONFIG")
                    .arg("--data-dir")
                    .arg(&self.dir)
                    .arg("get")
                    .arg(bucket_key)
                    .arg(&out)
                    .output()
                    .unwrap();
                assert!(
                    o.status.success(),
                    "strato get {bucket_key} from node store {}: {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&o.stderr)
                );
                out
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Total bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// `strato --json propagate ...` from the repository's data dir; returns
/// (exit success, report JSON, stderr).
pub fn propagate(
    prefix: &[&str],
    repo_dir: &Path,
    image: &str,
    nodes: &[String],
    extra: &[&str],
) -> (bool, serde_json::Value, String) {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(strato_bin());
            c
        }
        None => Command::new(strato_bin()),
    };
    cmd.env_remove("STRATO_CONFIG")
        .arg("--data-dir")
        .arg(repo_dir)
        .args(["--json", "propagate", image, "--nodes", &nodes.join(",")])
        .args(extra);
    let out = run_bounded(cmd, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("propagate printed no JSON ({e}): {stdout}\n{stderr}"));
    (out.status.success(), json, stderr)
}

/// Runs a command, killing it (by PID) if it outlives `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}
