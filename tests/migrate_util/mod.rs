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
        "exec:{} --json migrate recv --listen {listen} {site} --report {} {extra} 2>>{}",
        strato_bin(),
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
        "exec:{} --json migrate send --to {to} --vm {vm} {site} --report {} {extra} 2>>{}",
        strato_bin(),
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
