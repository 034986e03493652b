//! Real QEMU guests for the migration tests: the small guest of
//! scripts/build-guest.sh booted under `qemu-system-x86_64 -accel tcg`, a
//! QMP socket (driven by strato's own QMP client) and a serial console on a
//! unix socket, where commands run in the guest's shell and their output and
//! exit status come back. Every wait is bounded; QEMU is killed by its PID
//! when the handle drops.
//!
//! The harness is synchronous (each `Qemu` runs its QMP client on a runtime
//! of its own): use it from plain `#[test]`s, not `#[tokio::test]`.
//!
//! Typical use:
//! ```ignore
//! let spec = VmSpec::new("src", 1);
//! let mut src = Qemu::boot(&spec, &dir.join("src"));
//! let md5 = src.md5("/tmp/data");
//! let mut dst = Qemu::start(&spec, &dir.join("dst"), Some("unix:/tmp/x.sock"));
//! src.migrate("unix:/tmp/x.sock");
//! dst.wait_status("running", Duration::from_secs(60));
//! assert_eq!(dst.md5("/tmp/data"), md5);
//! ```
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use strato::qemu::qmp::{MigrationInfo, QmpClient};

use crate::common::require_tool;

/// Time for a TCG guest to boot to its shell (a few seconds when the machine
/// is idle; the suite runs two tests at once on two cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Default bound for one shell command in the guest.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for one migration of a test guest.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);
const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest's kernel and initramfs (built once per test process, cached
/// in target/guest across runs).
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn guest_image() -> &'static GuestImage {
    static IMAGE: OnceLock<GuestImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        require_tool("qemu-system-x86_64");
        for tool in ["busybox", "cpio", "dpkg-deb", "flock"] {
            require_tool(tool);
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cmd = Command::new(repo.join("scripts/build-guest.sh"));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = output_within(cmd, Duration::from_secs(600));
        assert!(
            out.status.success(),
            "scripts/build-guest.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio"),
        };
        assert!(
            image.kernel.is_file() && image.initrd.is_file(),
            "no guest in {dir:?}"
        );
        image
    })
}

/// What makes a guest: everything here must be the same on the source and
/// the destination of a migration.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub name: String,
    /// `strato.seed`: guests with different seeds share no /tmp/data page.
    pub seed: u64,
    pub mem_mib: u32,
    /// Size of /tmp/data in MiB (a multiple of 4).
    pub data_mib: u32,
    /// More QEMU arguments (e.g. `-drive file=...,if=virtio,format=raw`).
    pub extra_args: Vec<String>,
    /// Run QEMU through this prefix, e.g. `["ip", "netns", "exec", NS]`
    /// (which execs QEMU, so the PID stays QEMU's).
    pub prefix: Vec<String>,
}

impl VmSpec {
    pub fn new(name: &str, seed: u64) -> VmSpec {
        VmSpec {
            name: name.to_string(),
            seed,
            mem_mib: 256,
            data_mib: 8,
            extra_args: Vec::new(),
            prefix: Vec::new(),
        }
    }

    /// Attach a disk image as virtio-blk (`/dev/vda` in the guest, which
    /// has the ext4 module loaded).
    pub fn with_disk(mut self, path: &Path, format: &str) -> VmSpec {
        self.extra_args.push("-drive".into());
        self.extra_args
            .push(format!("file={},if=virtio,format={format}", path.display()));
        self
    }

    /// The QEMU command line (without `-incoming`) for sockets in `dir`.
    pub fn command(&self, dir: &Path) -> Command {
        let image = guest_image();
        let qemu = require_tool("qemu-system-x86_64");
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(qemu);
                c
            }
            None => Command::new(qemu),
        };
        let serial = dir.join("serial.sock");
        let qmp = dir.join("qmp.sock");
        cmd.args(["-name", &self.name])
            .args([
                "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1",
            ])
            .args(["-m", &self.mem_mib.to_string()])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-monitor",
                "none",
            ])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser0,path={},server=on,wait=off",
                serial.display()
            ))
            .args(["-serial", "chardev:ser0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            // A second monitor for the tools under test (`strato vm save`,
            // the migration agents): a QMP socket serves one client at a time.
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp-tool.sock").display()
            ))
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 strato.seed={} strato.data_mib={}",
                self.seed, self.data_mib
            ))
            .args(&self.extra_args);
        cmd
    }
}

/// One QEMU process with its QMP and serial connections.
pub struct Qemu {
    pub spec: VmSpec,
    pub dir: PathBuf,
    child: Child,
    rt: tokio::runtime::Runtime,
    qmp: QmpClient,
    serial: Option<Serial>,
    marker: u64,
}

impl Qemu {
    /// Start QEMU with sockets and log in `dir` (created), optionally with
    /// `-incoming INCOMING` ("defer", "unix:PATH", "exec:CMD", "file:PATH"),
    /// and connect to its QMP socket. Does not wait for the guest.
    pub fn start(spec: &VmSpec, dir: &Path, incoming: Option<&str>) -> Qemu {
        std::fs::create_dir_all(dir).expect("creating the VM's directory");
        let log_path = dir.join("qemu.log");
        let log = std::fs::File::create(&log_path).expect("creating qemu.log");
        let mut cmd = spec.command(dir);
        if let Some(uri) = incoming {
            cmd.args(["-incoming", uri]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let qmp_path = dir.join("qmp.sock");
        let qmp = match rt.block_on(QmpClient::connect_when_ready(
            &qmp_path,
            Duration::from_secs(30),
            QMP_TIMEOUT,
        )) {
            Ok(q) => q,
            Err(e) => {
                let mut child = child;
                let _ = child.kill();
                let _ = child.wait();
                panic!("QMP of {}: {e}\n{}", spec.name, tail(&log_path));
            }
        };
        Qemu {
            spec: spec.clone(),
            dir: dir.to_path_buf(),
            child,
            rt,
            qmp,
            serial: None,
            marker: 0,
        }
    }

    /// Start and wait for the guest's shell.
    pub fn boot(spec: &VmSpec, dir: &Path) -> Qemu {
        let mut vm = Qemu::start(spec, dir, None);
        vm.wait_shell(BOOT_TIMEOUT);
        vm
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The harness's own QMP socket (busy: it stays connected).
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// A second QMP socket, free for the tool under test (one client at a
    /// time).
    pub fn tool_qmp_path(&self) -> PathBuf {
        self.dir.join("qmp-tool.sock")
    }

    pub fn serial_path(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }

    /// QEMU's stdout and stderr so far (for failure messages).
    pub fn log(&self) -> String {
        tail(&self.dir.join("qemu.log"))
    }

    /// Wait until the guest's shell answers on the serial console.
    pub fn wait_shell(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive();
            // The quotes keep the echoed input from matching the marker:
            // only the shell's output of `echo` does.
            self.serial().send(b"echo __RE\"\"ADY__\n");
            let step = Instant::now() + Duration::from_secs(2);
            if self
                .serial()
                .read_until("__READY__", step.min(deadline))
                .is_some()
            {
                return;
            }
            if Instant::now() >= deadline {
                let seen = self.serial().seen();
                panic!(
                    "guest {} gave no shell within {within:?}; console:\n{seen}\n{}",
                    self.spec.name,
                    self.log()
                );
            }
        }
    }

    /// Run a shell command in the guest; returns (exit status, output with
    /// `\r` removed). Bounded by `within`.
    pub fn run_status(&mut self, command: &str, within: Duration) -> (i32, String) {
        self.marker += 1;
        let k = self.marker;
        let line = format!("echo __B\"\"EG_{k}__; {command}; echo __E\"\"ND_{k}__ $?\n");
        let begin = format!("__BEG_{k}__\n");
        let end = format!("__END_{k}__ ");
        let deadline = Instant::now() + within;
        self.serial().send(line.as_bytes());
        let name = self.spec.name.clone();
        let Some(_) = self.serial().read_until(&begin, deadline) else {
            panic!("guest {name}: {command:?} did not start within {within:?}");
        };
        let Some(out) = self.serial().read_until(&end, deadline) else {
            panic!(
                "guest {name}: {command:?} did not finish within {within:?}; output so far:\n{}",
                self.serial().seen()
            );
        };
        let Some(status) = self.serial().read_until("\n", deadline) else {
            panic!("guest {name}: no exit status for {command:?}");
        };
        let code = status.trim().parse().unwrap_or(-1);
        (code, out[..out.len() - end.len()].to_string())
    }

    /// Run a command that must succeed; returns its output.
    pub fn run(&mut self, command: &str) -> String {
        let (code, out) = self.run_status(command, CMD_TIMEOUT);
        assert_eq!(
            code, 0,
            "guest {}: {command:?} exited {code}:\n{out}",
            self.spec.name
        );
        out
    }

    /// md5 of a file inside the guest.
    pub fn md5(&mut self, path: &str) -> String {
        let out = self.run(&format!("md5sum {path}"));
        let sum = out
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(sum.len(), 32, "unexpected md5sum output {out:?}");
        sum
    }

    /// One QMP command; panics with QEMU's error.
    pub fn qmp(&mut self, command: &str, args: Option<Value>) -> Value {
        let r = self.rt.block_on(self.qmp.execute(command, args));
        r.unwrap_or_else(|e| panic!("{}: QMP {command}: {e}", self.spec.name))
    }

    /// The QMP client itself, for calls the helpers here don't cover
    /// (run its futures with `block_on`).
    pub fn qmp_client(&mut self) -> (&tokio::runtime::Runtime, &mut QmpClient) {
        (&self.rt, &mut self.qmp)
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn status(&mut self) -> String {
        let r = self.rt.block_on(self.qmp.status());
        r.unwrap_or_else(|e| panic!("{}: query-status: {e}", self.spec.name))
    }

    /// Poll `query-status` until it is `want` (e.g. "running" on a
    /// destination once the incoming migration is done).
    pub fn wait_status(&mut self, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status();
            if s == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: status {s:?}, not {want:?} within {within:?}\n{}",
                self.spec.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn set_capabilities(&mut self, caps: &[(&str, bool)]) {
        let r = self.rt.block_on(self.qmp.set_capabilities(caps));
        r.unwrap_or_else(|e| panic!("{}: migrate-set-capabilities: {e}", self.spec.name));
    }

    pub fn query_migrate(&mut self) -> MigrationInfo {
        let r = self.rt.block_on(self.qmp.query_migrate());
        r.unwrap_or_else(|e| panic!("{}: query-migrate: {e}", self.spec.name))
    }

    /// Start a migration to `uri` and wait (bounded) for it to complete.
    pub fn migrate(&mut self, uri: &str) -> MigrationInfo {
        self.start_migration(uri);
        self.wait_migration(MIGRATE_TIMEOUT)
    }

    pub fn start_migration(&mut self, uri: &str) {
        let r = self.rt.block_on(self.qmp.migrate(uri));
        r.unwrap_or_else(|e| panic!("{}: migrate {uri}: {e}", self.spec.name));
    }

    pub fn wait_migration(&mut self, within: Duration) -> MigrationInfo {
        let r = self
            .rt
            .block_on(self.qmp.wait_migration(Duration::from_millis(100), within));
        r.unwrap_or_else(|e| panic!("{}: migration: {e}\n{}", self.spec.name, self.log()))
    }

    /// Wait for QEMU to exit by itself (e.g. after `quit`); false on timeout.
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "QEMU of {} exited ({status}):\n{}",
                self.spec.name,
                self.log()
            );
        }
    }

    fn serial(&mut self) -> &mut Serial {
        if self.serial.is_none() {
            self.serial = Some(Serial::connect(
                &self.serial_path(),
                Duration::from_secs(30),
            ));
        }
        self.serial.as_mut().expect("serial connected above")
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest's serial console: a byte stream with a buffer of what was read
/// but not yet consumed.
struct Serial {
    stream: UnixStream,
    buf: String,
    /// Everything consumed, for failure messages (the last part only).
    history: String,
}

impl Serial {
    fn connect(path: &Path, within: Duration) -> Serial {
        let deadline = Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("serial console {path:?}: {e}"),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .expect("write timeout");
        Serial {
            stream,
            buf: String::new(),
            history: String::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to the serial console: {e}"));
    }

    /// Read until `needle` appears (by the deadline); returns the text up to
    /// and including it, leaving the rest buffered. `\r` is dropped: the
    /// tty turns every `\n` into `\r\n`.
    fn read_until(&mut self, needle: &str, deadline: Instant) -> Option<String> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = self.buf.find(needle) {
                let rest = self.buf.split_off(i + needle.len());
                let found = std::mem::replace(&mut self.buf, rest);
                self.remember(&found);
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&chunk[..n]).replace('\r', "");
                    self.buf.push_str(&text);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the serial console: {e}"),
            }
        }
    }

    fn remember(&mut self, text: &str) {
        self.history.push_str(text);
        if self.history.len() > 8192 {
            let cut = self.history.len() - 4096;
            let cut = (cut..self.history.len())
                .find(|&i| self.history.is_char_boundary(i))
                .unwrap_or(0);
            self.history.drain(..cut);
        }
    }

    fn seen(&self) -> String {
        format!("{}{}", self.history, self.buf)
    }
}

/// The last part of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text[start..].to_string()
}

/// Run a command to completion within `limit`, killing it (by PID) if it
/// takes longer.
pub fn output_within(cmd: Command, limit: Duration) -> std::process::Output {
    let mut cmd = cmd;
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}
