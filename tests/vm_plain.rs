//! Plain QEMU live migration of a real TCG guest, no strato agent in the
//! path: proves the guest image and the harness (tests/qemu_util) that the
//! migration-engine tests build on. Needs qemu-system-x86_64 (QEMU 10),
//! busybox-static, cpio and apt (scripts/test.sh installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod qemu_util;

use std::process::Command;

use common::*;
use qemu_util::*;

/// The guest moves between two QEMU processes through QEMU's `exec:`
/// transport (a `cat` on each side of a FIFO, as the agents sit later) and
/// keeps its memory: /tmp/data and a file written just before have the same
/// content inside the guest afterwards, and the source is left stopped.
#[test]
fn live_migration_over_exec_keeps_guest_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = VmSpec::new("plain", 7);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    let data_md5 = src.md5("/tmp/data");
    src.run("echo written-before-migration > /tmp/marker");
    let size = src.run("wc -c < /tmp/data");
    assert_eq!(size.trim(), (8u64 << 20).to_string(), "guest data size");

    let fifo = dir.path().join("migration.fifo");
    run_tool(Command::new(require_tool("mkfifo")).arg(&fifo));
    let incoming = format!("exec:cat {}", fifo.display());
    let mut dst = Qemu::start(&spec, &dir.path().join("dst"), Some(&incoming));
    assert_eq!(dst.status(), "inmigrate");

    let info = src.migrate(&format!("exec:cat > {}", fifo.display()));
    assert_eq!(info.status, "completed");
    let ram = info.ram.clone().unwrap_or_default();
    // At least the guest's data went over in full pages.
    assert!(
        ram.normal_bytes >= 8 << 20,
        "only {} bytes of normal pages migrated",
        ram.normal_bytes
    );
    eprintln!(
        "plain migration: downtime {:?} ms, total {:?} ms, {} bytes transferred",
        info.downtime, info.total_time, ram.transferred
    );

    dst.wait_status("running", std::time::Duration::from_secs(60));
    assert_eq!(src.status(), "postmigrate");
    assert_eq!(dst.md5("/tmp/data"), data_md5);
    assert_eq!(
        dst.run("cat /tmp/marker").trim(),
        "written-before-migration"
    );
    // The guest goes on working after the move.
    dst.run("echo after > /tmp/after && sync");
    assert_eq!(dst.run("cat /tmp/after").trim(), "after");

    // On through a file (QEMU's plain stream format) into a third QEMU
    // started with `-incoming file:`.
    let file = dir.path().join("guest.mig");
    let info = dst.migrate(&format!("file:{}", file.display()));
    assert_eq!(info.status, "completed");
    drop(dst);
    let incoming = format!("file:{}", file.display());
    let mut third = Qemu::start(&spec, &dir.path().join("third"), Some(&incoming));
    third.wait_status("running", std::time::Duration::from_secs(60));
    assert_eq!(third.md5("/tmp/data"), data_md5);
    assert_eq!(third.run("cat /tmp/after").trim(), "after");
}

/// The guests the migration tests use differ by their seed and only by it:
/// the same seed makes the same /tmp/data, another seed another one, and the
/// shared pool is the same in all (what dedup across guests can find).
#[test]
fn guests_differ_by_seed_and_share_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Qemu::start(&VmSpec::new("seed5a", 5), &dir.path().join("a"), None);
    let mut b = Qemu::start(&VmSpec::new("seed5b", 5), &dir.path().join("b"), None);
    let mut c = Qemu::start(&VmSpec::new("seed6", 6), &dir.path().join("c"), None);
    for vm in [&mut a, &mut b, &mut c] {
        vm.wait_shell(BOOT_TIMEOUT);
    }
    let (a_data, b_data, c_data) = (a.md5("/tmp/data"), b.md5("/tmp/data"), c.md5("/tmp/data"));
    assert_eq!(a_data, b_data, "same seed, same data");
    assert_ne!(a_data, c_data, "another seed, other data");
    let pool = a.md5("/shared/pool");
    assert_eq!(c.md5("/shared/pool"), pool);
    assert_ne!(pool, a_data);
    // Sampled 4 KiB pages (every 64th) are distinct within a guest and
    // between guests of different seeds.
    let pages = |vm: &mut Qemu| -> Vec<String> {
        let out = vm.run(
            "i=0; while [ $i -lt 2048 ]; do dd if=/tmp/data bs=4096 skip=$i count=1 2>/dev/null | md5sum; i=$((i+64)); done",
        );
        out.lines().map(str::to_string).collect()
    };
    let mut sampled = pages(&mut a);
    assert_eq!(sampled.len(), 32);
    sampled.extend(pages(&mut c));
    let distinct: std::collections::HashSet<&String> = sampled.iter().collect();
    assert_eq!(distinct.len(), 64, "a data page repeats: {sampled:?}");
}
