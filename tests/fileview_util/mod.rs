//! Harness of the file-view tests: a `strato serve` that can be killed and
//! brought back at the same address, and `strato mount` processes that are
//! always unmounted when the test ends, whatever it did.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

pub const KEY_A: &str = "STRTESTACCESSKEY0001";
pub const KEY_S: &str = "test-secret-key-0123456789abcdefghijklmn";

/// A child process killed (by its PID) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `strato serve` of `st` on a fixed loopback port.
pub fn serve(st: &Strato, port: u16) -> Proc {
    let mut child = st
        .cmd()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("STRATO_ACCESS_KEY", KEY_A)
        .env("STRATO_SECRET_KEY", KEY_S)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("strato serving S3"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    Proc(child)
}

/// A repository holding `size` random bytes as s3://imgs/a.img, served on a
/// fixed port.
pub fn image_server(size: usize, seed: u64) -> (tempfile::TempDir, Strato, Vec<u8>, u16, Proc) {
    let tmp = tempfile::tempdir().unwrap();
    let st = Strato::new("redb");
    let data = random_bytes(size, seed);
    let f = tmp.path().join("src.img");
    std::fs::write(&f, &data).unwrap();
    st.ok(&["mb", "imgs"]);
    st.put(&f, "imgs/a.img", "block");
    let port = free_port();
    let p = serve(&st, port);
    (tmp, st, data, port, p)
}

/// Whether `path` is a mountpoint in this mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let want = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(want))
}

/// A running `strato --json mount`.
pub struct Mount {
    pub proc: Option<Proc>,
    pub path: PathBuf,
    pub lines: Option<std::io::Lines<std::io::BufReader<std::process::ChildStdout>>>,
}

impl Mount {
    /// Mounts s3://`image` at `path` from the repository at `endpoint`.
    pub fn start(endpoint: &str, image: &str, cache: &Path, path: &Path, extra: &[&str]) -> Mount {
        let mut child = Command::new(strato_bin())
            .args(["--json", "mount", image])
            .arg(path)
            .args(["--endpoint", endpoint, "--cache"])
            .arg(cache)
            .args(extra)
            .env("STRATO_ACCESS_KEY", KEY_A)
            .env("STRATO_SECRET_KEY", KEY_S)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(first.starts_with("strato mount serving "), "{first}");
        assert!(
            is_mounted(path),
            "{first}, yet {path:?} is not a mountpoint"
        );
        Mount {
            proc: Some(Proc(child)),
            path: path.to_path_buf(),
            lines: Some(lines),
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().unwrap().0.id()
    }

    /// SIGTERM; waits for the exit (bounded) and returns the final
    /// statistics line.
    pub fn stop(&mut self) -> serde_json::Value {
        let mut p = self.proc.take().unwrap();
        run_tool(Command::new("kill").args(["-TERM", &p.0.id().to_string()]));
        let line = self.lines.as_mut().unwrap().next().unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = p.0.try_wait().unwrap() {
                assert!(status.success(), "strato mount exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "strato mount did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &p.0.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(500));
            drop(p);
        }
        // Never leave a mount behind, even after a failed test.
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// `dd` of `len` MiB at MiB offset `skip` of `file` to `out` with O_DIRECT
/// (past the kernel's page cache, so every read reaches the view); returns
/// (success, stderr).
pub fn dd_direct(file: &Path, out: &Path, skip_mib: u64, len_mib: u64) -> (bool, String) {
    let o = Command::new(require_tool("dd"))
        .arg(format!("if={}", file.display()))
        .arg(format!("of={}", out.display()))
        .args(["bs=1M", "iflag=direct", "status=none"])
        .arg(format!("skip={skip_mib}"))
        .arg(format!("count={len_mib}"))
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `cmp` of two files; true when identical.
pub fn cmp(a: &Path, b: &Path) -> bool {
    let o = Command::new(require_tool("cmp"))
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!("cmp: {}", String::from_utf8_lossy(&o.stdout));
    }
    o.status.success()
}
