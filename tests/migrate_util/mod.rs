//! Helpers of the migration-engine tests: the `exec:` command lines of the
//! two agents and their JSON reports.
#![allow(dead_code)]

use std::path::Path;

use crate::common::{strato_bin, Server};

/// A free localhost port (bound, then released for the receiver).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port");
    l.local_addr().expect("local addr").port()
}

/// The site flags of an agent talking to `site`.
pub fn site_flags(site: &Server) -> String {
    format!(
        "--site {} --access-key {} --secret-key {}",
        site.endpoint, site.access_key, site.secret_key
    )
}

/// Plain TCP unless `extra` gives the TLS files.
fn link_flag(extra: &str) -> &'static str {
    if extra.contains("--tls-") {
        ""
    } else {
        "--insecure"
    }
}

/// `strato migrate certs DIR HOST`: a CA in `dir` (made on first use) and
/// a certificate for `host`; the agent flags that use them.
pub fn migration_certs(dir: &Path, host: &str) -> Vec<String> {
    let out = std::process::Command::new(strato_bin())
        .args(["--json", "migrate", "certs"])
        .arg(dir)
        .arg(host)
        .output()
        .expect("strato migrate certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("certs JSON");
    let h = &v["hosts"][0];
    assert_eq!(h["host"], host);
    let key = h["key"].as_str().expect("key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(key).expect("key file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "key file mode");
    vec![
        "--tls-cert".into(),
        h["cert"].as_str().expect("cert").into(),
        "--tls-key".into(),
        key.into(),
        "--tls-ca".into(),
        v["ca"].as_str().expect("ca").into(),
    ]
}

/// [`migration_certs`] as one string for an `exec:` command line.
pub fn tls_flags(dir: &Path, host: &str) -> String {
    migration_certs(dir, host).join(" ")
}

/// `-incoming` URI running a receiver on `listen`.
pub fn recv_uri(listen: &str, site: Option<&Server>, report: &Path, extra: &str) -> String {
    recv_uri_flags(
        listen,
        &site.map(site_flags).unwrap_or_default(),
        report,
        extra,
    )
}

pub fn recv_uri_flags(listen: &str, site: &str, report: &Path, extra: &str) -> String {
    format!(
        "exec:{} --json migrate recv {} --listen {listen} {site} --report {} {extra} 2>>{}",
        strato_bin(),
        link_flag(extra),
        report.display(),
        report.with_extension("log").display()
    )
}

/// `migrate` URI running a sender to `to`.
pub fn send_uri(to: &str, site: Option<&Server>, vm: &str, report: &Path, extra: &str) -> String {
    send_uri_flags(
        to,
        &site.map(site_flags).unwrap_or_default(),
        vm,
        report,
        extra,
    )
}

pub fn send_uri_flags(to: &str, site: &str, vm: &str, report: &Path, extra: &str) -> String {
    format!(
        "exec:{} --json migrate send {} --to {to} --vm {vm} {site} --report {} {extra} 2>>{}",
        strato_bin(),
        link_flag(extra),
        report.display(),
        report.with_extension("log").display()
    )
}

/// Read an agent's JSON report, waiting (bounded) for the agent to write
/// it: QEMU may finish before its agent does.
pub fn read_report(path: &Path) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return v;
            }
        }
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(path.with_extension("log")).unwrap_or_default();
            panic!("no report at {}; agent log:\n{log}", path.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn agent_log(report: &Path) -> String {
    std::fs::read_to_string(report.with_extension("log")).unwrap_or_default()
}

/// Connect to an agent that may still be starting (bounded, 20 s).
pub fn connect(addr: &str) -> std::net::TcpStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("connecting to {addr}: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// One wire frame from a receiver (`None`: closed, garbled or 30 s quiet).
pub fn read_frame(s: &mut std::net::TcpStream) -> Option<strato::migrate::memory::wire::Frame> {
    use std::io::Read;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .ok()?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).ok()?;
    strato::migrate::memory::wire::Frame::decode(head[0], bytes::Bytes::from(p)).ok()
}

/// Wait (bounded, 120 s) for an agent to exit: (success, its stderr).
pub fn wait_with_stderr(mut child: std::process::Child) -> (bool, String) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.success(), err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A TCP relay to `to` that drops both sides after `limit` bytes from the
/// sender: the WAN failing mid-migration. Returns the relay's address.
pub fn cutting_relay(to: String, limit: usize) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::time::{Duration, Instant};
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let Ok((mut a, _)) = l.accept() else { return };
        // The receiver may still be starting (a loaded machine): retry,
        // bounded, as a sender's connect does.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut b = loop {
            match TcpStream::connect(&to) {
                Ok(b) => break b,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(_) => return,
            }
        };
        let (Ok(mut back_a), Ok(mut back_b)) = (a.try_clone(), b.try_clone()) else {
            return;
        };
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_b, &mut back_a);
        });
        let mut buf = vec![0u8; 16 << 10];
        let mut moved = 0;
        while moved < limit {
            match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if b.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    moved += k;
                }
            }
        }
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    });
    addr
}

/// A TCP relay to `to` (a site's HOST:PORT) that forwards both ways until
/// [`StallingRelay::stall`], then stops answering: what arrives from either
/// side is read and dropped, connections stay open, new ones are accepted
/// and never answered — a site gone quiet without closing anything.
pub struct StallingRelay {
    pub addr: String,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bytes the clients sent after the stall (requests that went unanswered).
    after: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl StallingRelay {
    /// Relays for at most `life` (every thread ends by then).
    pub fn new(to: String, life: std::time::Duration) -> StallingRelay {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr").to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let after = Arc::new(AtomicU64::new(0));
        let (st, af) = (stalled.clone(), after.clone());
        let end = Instant::now() + life;
        std::thread::spawn(move || {
            while Instant::now() < end {
                let Ok((a, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = a.set_nonblocking(false);
                let Ok(b) = TcpStream::connect(&to) else {
                    continue;
                };
                let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
                    continue;
                };
                for (from, to, count) in [(a, b, Some(af.clone())), (b2, a2, None)] {
                    let st = st.clone();
                    std::thread::spawn(move || pump_until(from, to, &st, count.as_deref(), end));
                }
            }
        });
        StallingRelay {
            addr,
            stalled,
            after,
        }
    }

    /// From now on nothing is forwarded.
    pub fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn bytes_after_stall(&self) -> u64 {
        self.after.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Copy `from` to `to` until either closes or `end`; once `stalled`, read
/// and drop (counting into `after`).
fn pump_until(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    stalled: &std::sync::atomic::AtomicBool,
    after: Option<&std::sync::atomic::AtomicU64>,
    end: std::time::Instant,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 << 10];
    while std::time::Instant::now() < end {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if stalled.load(Ordering::SeqCst) => {
                if let Some(a) = after {
                    a.fetch_add(n as u64, Ordering::SeqCst);
                }
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
