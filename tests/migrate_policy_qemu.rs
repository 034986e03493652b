//! `strato migrate control` on a real TCG guest: the XEN-basic schedule sets
//! QEMU's max-bandwidth round by round, and the stop policy (not QEMU's own
//! downtime estimate, held at 1 ms) triggers the switchover while the guest
//! keeps dirtying memory. The guest's data must survive the migration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod qemu_util;

use std::time::Duration;

use common::Strato;
use qemu_util::*;

#[test]
fn controller_sets_bandwidth_per_round_and_stops_a_real_migration() {
    let s = Strato::new("redb");
    let dir = tempfile::tempdir().expect("tempdir");
    let src_dir = dir.path().join("src");
    // A second QMP monitor for the controller; the harness keeps the first.
    let ctl = src_dir.join("ctl.sock");
    let spec = VmSpec::new("policy", 5);
    let mut src_spec = spec.clone();
    src_spec.extra_args.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", ctl.display()),
    ]);
    let mut src = Qemu::boot(&src_spec, &src_dir);
    let data_md5 = src.md5("/tmp/data");
    // Keep 8 MiB of guest memory hot for the whole migration, so it never
    // converges by itself (QEMU would need 8 MB per ms to switch over).
    src.run(
        "(while true; do dd if=/tmp/data of=/tmp/hot bs=65536 count=128 conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 & true",
    );

    src.run("sleep 2; test -s /tmp/hot");
    let sock = dir.path().join("migrate.sock");
    let mut dst = Qemu::start(
        &spec,
        &dir.path().join("dst"),
        Some(&format!("unix:{}", sock.display())),
    );
    let params = dir.path().join("policy.toml");
    // XEN-basic's shape with smaller numbers (a TCG guest on two shared
    // cores), and Xen's stop after at most 8 rounds.
    std::fs::write(
        &params,
        "[xen_basic]\nstart_mbps = 40.0\nstep_mbps = 40.0\n[xen]\nmax_rounds = 8\n",
    )
    .expect("params");
    let out = s.ok(&[
        "--json",
        "migrate",
        "control",
        "--qmp",
        ctl.to_str().unwrap(),
        "--uri",
        &format!("unix:{}", sock.display()),
        "--policy",
        "xen-basic",
        "--link-mbps",
        "1000",
        "--memory-mib",
        "256",
        "--params",
        params.to_str().unwrap(),
        "--timeout-s",
        "300",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("control JSON");
    eprintln!("{v:#}");
    let r = &v["report"];
    assert_eq!(r["status"], "completed", "{}", src.log());
    let rounds = r["rounds"].as_array().expect("rounds");
    assert!(
        rounds.len() >= 2,
        "only {} round(s) seen: {r}",
        rounds.len()
    );
    let mut last_read = 0;
    for (k, round) in rounds.iter().enumerate() {
        let want = ((40.0 + 40.0 * k as f64) * 1e6 / 8.0) as u64;
        let read = round["max_bandwidth_read"].as_u64().unwrap();
        // QEMU reports back the max-bandwidth the controller set for this round.
        assert_eq!(
            round["max_bandwidth_set"].as_u64().unwrap(),
            want,
            "{round}"
        );
        assert_eq!(read, want, "QEMU's max-bandwidth in round {}", k + 1);
        assert!(read > last_read, "bandwidth rises round by round");
        last_read = read;
    }
    // The policy, not QEMU, ended the pre-copy phase.
    assert_eq!(r["stop_round"].as_u64(), Some(rounds.len() as u64), "{r}");
    assert_eq!(rounds.last().unwrap()["decision"], "stop");
    assert!(r["downtime_ms"].as_u64().is_some());

    dst.wait_status("running", Duration::from_secs(120));
    assert_eq!(src.status(), "postmigrate");
    assert_eq!(dst.md5("/tmp/data"), data_md5, "guest data after migration");
}
