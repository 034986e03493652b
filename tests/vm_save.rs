//! `strato vm save` / `strato vm restore` with a real TCG guest: its RAM is
//! saved in QEMU's mapped-ram format into the store (page-sized chunks, zero
//! pages as holes), then pulled onto three "hosts" (separate caches) and
//! loaded into three QEMU clones, each of which has the saved guest's memory.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod qemu_util;

use std::path::Path;
use std::time::Duration;

use common::*;
use qemu_util::*;
use serde_json::Value;

fn restore_cmd(server: &Server, image: &str, host: &Path, qmp: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--json",
        "vm",
        "restore",
        image,
        "--endpoint",
        &server.endpoint,
        "--access-key",
        &server.access_key,
        "--secret-key",
        &server.secret_key,
        "--cache",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    args.push(host.join("cache").display().to_string());
    args.push("--out".into());
    let n = std::fs::read_dir(host)
        .map(std::iter::Iterator::count)
        .unwrap_or(0);
    args.push(host.join(format!("guest-{n}.ram")).display().to_string());
    if let Some(q) = qmp {
        args.push("--qmp".into());
        args.push(q.display().to_string());
    }
    args
}

fn restore(server: &Server, image: &str, host: &Path, qmp: Option<&Path>) -> Value {
    std::fs::create_dir_all(host).expect("host dir");
    let args = restore_cmd(server, image, host, qmp);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server.strato.json(&args[1..])
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

#[test]
fn save_restore_and_three_clones_from_one_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Strato::new("redb");
    repo.ok(&["mb", "vms"]);

    let spec = VmSpec::new("saved", 11);
    // Another guest (another seed) boots alongside, for dedup across guests.
    let mut other = Qemu::start(&VmSpec::new("other", 12), &dir.path().join("other"), None);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    other.wait_shell(BOOT_TIMEOUT);
    let data_md5 = src.md5("/tmp/data");
    src.run("echo saved-state > /tmp/marker");
    let qmp = src.tool_qmp_path();
    let qmp = qmp.to_str().expect("utf-8 path");

    // A snapshot: the guest goes on running.
    let first = repo.json(&["vm", "save", "--qmp", qmp, "vms/snap", "--resume"]);
    eprintln!("first save: {first}");
    assert_eq!(first["qemu"]["vm_status"], "running");
    src.wait_status("running", Duration::from_secs(30));
    assert_eq!(src.run("cat /tmp/marker").trim(), "saved-state");
    let first_new = num(&first, &["new_bytes"]);
    let ram_bytes = num(&first, &["qemu", "ram_bytes"]);
    // The guest's data is in; the zero pages of its 256 MiB are not.
    assert!(
        first_new >= 8 << 20,
        "first save stored only {first_new} bytes"
    );
    assert!(
        first_new <= ram_bytes + (1 << 20),
        "stored {first_new} bytes for {ram_bytes} bytes of non-zero RAM"
    );
    assert!(ram_bytes < 200 << 20, "{ram_bytes} bytes of non-zero RAM");

    // The suspend: the same guest saved again, stopped. Only the pages it
    // changed since the snapshot are new to the store.
    let second = repo.json(&["vm", "save", "--qmp", qmp, "vms/suspended"]);
    eprintln!("second save: {second}");
    assert_eq!(second["qemu"]["vm_status"], "running");
    let second_new = num(&second, &["new_bytes"]);
    assert!(
        second_new * 10 < first_new,
        "second save of the same guest stored {second_new} new bytes (first {first_new})"
    );
    assert_eq!(
        src.status(),
        "postmigrate",
        "a plain save leaves the guest stopped"
    );
    drop(src);

    // A different guest shares the kernel, the initramfs and the pool with
    // the saved one: those pages are not stored again, its own data is.
    let other_qmp = other.tool_qmp_path();
    let third = repo.json(&[
        "vm",
        "save",
        "--qmp",
        other_qmp.to_str().unwrap(),
        "vms/other",
    ]);
    eprintln!("other guest's save: {third}");
    let third_new = num(&third, &["new_bytes"]);
    assert!(
        third_new >= 8 << 20,
        "the other guest's own data is new: {third_new}"
    );
    assert!(
        third_new < first_new,
        "another guest stored {third_new} new bytes, as much as the first ({first_new})"
    );
    drop(other);
    let stored_after_saves = repo.stored_bytes();

    // Three hosts, each with its own cache, each starts a clone.
    let server = Server::start_with(repo, &[]);
    let mut clones = Vec::new();
    let mut fetched = Vec::new();
    let mut memory_files = Vec::new();
    for i in 0..3 {
        let host = dir.path().join(format!("host{i}"));
        let mut clone_spec = spec.clone();
        clone_spec.name = format!("clone{i}");
        let mut vm = Qemu::start(&clone_spec, &host.join("vm"), Some("defer"));
        assert_eq!(vm.status(), "inmigrate");
        let r = restore(
            &server,
            "s3://vms/suspended",
            &host,
            Some(&vm.tool_qmp_path()),
        );
        eprintln!("clone {i}: {r}");
        memory_files.push(r["out"].as_str().expect("out path").to_string());
        assert_eq!(r["qemu"]["vm_status"], "running");
        let unique = num(&r, &["pull", "unique_chunks"]);
        let chunks = num(&r, &["pull", "chunks"]);
        // Each distinct page moves once, however often it repeats.
        assert_eq!(num(&r, &["pull", "fetched_chunks"]), unique);
        assert!(unique <= chunks);
        fetched.push(num(&r, &["pull", "fetched_bytes"]));
        assert_eq!(vm.md5("/tmp/data"), data_md5, "clone {i}'s data");
        assert_eq!(vm.run("cat /tmp/marker").trim(), "saved-state");
        // The clones are separate guests from here on.
        vm.run(&format!("echo clone-{i} > /tmp/who"));
        clones.push(vm);
    }
    for (i, vm) in clones.iter_mut().enumerate() {
        assert_eq!(vm.run("cat /tmp/who").trim(), format!("clone-{i}"));
    }
    eprintln!("bytes moved per clone: {fetched:?}");

    // A QEMU whose configuration differs from the saved guest's (less
    // memory) cannot take it: the error says why.
    let mut small = spec.clone();
    small.name = "mismatch".into();
    small.mem_mib = 128;
    let vm = Qemu::start(&small, &dir.path().join("mismatch"), Some("defer"));
    let qmp = vm.tool_qmp_path();
    let err = server.strato.fails(&[
        "vm",
        "load",
        "--qmp",
        qmp.to_str().unwrap(),
        &memory_files[0],
    ]);
    assert!(err.contains("configuration"), "{err}");
    drop(vm);

    // Another clone on host 0 moves nothing: its cache has every page.
    let again = restore(
        &server,
        "s3://vms/suspended",
        &dir.path().join("host0"),
        None,
    );
    assert_eq!(num(&again, &["pull", "fetched_bytes"]), 0);

    // Clones only read: the repository stored nothing for them.
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    assert_eq!(server.strato.stored_bytes(), stored_after_saves);
}

/// Bad input is refused with a clear error and changes nothing.
#[test]
fn save_and_restore_refuse_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Strato::new("redb");
    repo.ok(&["mb", "vms"]);
    let missing = dir.path().join("no-such.sock");
    let missing = missing.to_str().expect("utf-8");

    let err = repo.fails(&["vm", "save", "--qmp", missing, "vms/x"]);
    assert!(err.contains("no-such.sock"), "{err}");
    let err = repo.fails(&["vm", "save", "--qmp", missing, "nobucket/x"]);
    assert!(err.contains("nobucket"), "{err}");
    assert_eq!(repo.ok(&["ls", "vms"]).trim(), "");

    // A QEMU that is not waiting for an incoming migration is left alone.
    let spec = VmSpec::new("busy", 3);
    let mut vm = Qemu::start(&spec, &dir.path().join("vm"), None);
    let file = dir.path().join("mem.ram");
    std::fs::write(&file, b"not a saved guest").expect("write");
    let qmp = vm.tool_qmp_path();
    let err = repo.fails(&[
        "vm",
        "load",
        "--qmp",
        qmp.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(err.contains("-incoming defer"), "{err}");
    assert_eq!(vm.status(), "running");

    // Restore never overwrites a file, and an unknown object writes nothing.
    let server = Server::start_with(repo, &[]);
    let host = dir.path().join("host");
    std::fs::create_dir_all(&host).expect("host");
    let existing = host.join("exists.ram");
    std::fs::write(&existing, b"keep me").expect("write");
    let out = server.strato.run(&[
        "vm",
        "restore",
        "s3://vms/none",
        "--endpoint",
        &server.endpoint,
        "--access-key",
        &server.access_key,
        "--secret-key",
        &server.secret_key,
        "--cache",
        host.join("cache").to_str().unwrap(),
        "--out",
        existing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");
    let fresh = host.join("fresh.ram");
    let out = server.strato.run(&[
        "vm",
        "restore",
        "s3://vms/none",
        "--endpoint",
        &server.endpoint,
        "--access-key",
        &server.access_key,
        "--secret-key",
        &server.secret_key,
        "--cache",
        host.join("cache").to_str().unwrap(),
        "--out",
        fresh.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "restoring a missing object succeeded"
    );
    assert!(!fresh.exists(), "a failed restore left {fresh:?}");
}
