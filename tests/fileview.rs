//! `strato mount`: the pseudo image as a read-only file through FUSE, read
//! by cmp, dd and QEMU's mapped-ram load, against a real `strato serve`
//! that is killed and brought back; `strato vm load --lazy`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod fileview_util;
mod qemu_util;

use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

use common::*;
use fileview_util::*;
use qemu_util::*;
use serde_json::Value;

const EROFS: i32 = 30;

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn view_is_byte_identical_and_concurrent_readers_share_fetches() {
    let (tmp, _st, data, port, _server) = image_server(24 << 20, 31);
    let src = tmp.path().join("src.img");
    let view = tmp.path().join("a.img");
    let mut m = Mount::start(
        &endpoint(port),
        "s3://imgs/a.img",
        &tmp.path().join("cache"),
        &view,
        &[],
    );
    assert_eq!(std::fs::metadata(&view).unwrap().len(), data.len() as u64);

    // Four readers at once, past the page cache, so their reads of the same
    // chunks meet in the pseudo image.
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (view, out) = (view.clone(), tmp.path().join(format!("copy{i}.raw")));
            std::thread::spawn(move || {
                let (ok, err) = dd_direct(&view, &out, 0, 24);
                assert!(ok, "reader {i}: {err}");
                out
            })
        })
        .collect();
    for r in readers {
        assert!(cmp(&r.join().unwrap(), &src));
    }
    // cmp of the file itself (through the page cache), and a ranged read
    // that ends past the end of the file (a short read, as for any file).
    assert!(cmp(&view, &src));
    let tail = tmp.path().join("tail.raw");
    let (ok, err) = dd_direct(&view, &tail, 23, 4);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&tail).unwrap(), &data[23 << 20..]);

    let stats = m.stop();
    eprintln!("file view stats: {stats}");
    // Random data has no repeated chunk: each was fetched exactly once for
    // six full reads of the image.
    assert_eq!(num(&stats, "fetched_bytes"), data.len() as u64, "{stats}");
    assert_eq!(
        num(&stats, "fetched_chunks"),
        num(&stats, "cache_misses"),
        "{stats}"
    );
    assert!(
        num(&stats, "cache_hits") > num(&stats, "cache_misses"),
        "{stats}"
    );
    assert_eq!(num(&stats, "read_errors"), 0, "{stats}");
    assert_eq!(stats["complete"], true, "{stats}");
    // Unmounted, and the mountpoint it made is gone.
    assert!(!is_mounted(&view));
    assert!(!view.exists());
}

#[test]
fn writes_and_bad_mountpoints_are_refused() {
    let (tmp, _st, data, port, _server) = image_server(4 << 20, 32);
    let view = tmp.path().join("a.img");
    // An existing empty file is a mountpoint too, and stays afterwards.
    std::fs::write(&view, b"").unwrap();
    let mut m = Mount::start(
        &endpoint(port),
        "s3://imgs/a.img",
        &tmp.path().join("cache"),
        &view,
        &[],
    );
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(&view)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EROFS), "open for writing: {e}");
    let e = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(0)
        .open(&view)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(EROFS), "open read-write: {e}");
    for (tool, args) in [
        ("truncate", vec!["-s", "0"]),
        ("chmod", vec!["0644"]),
        ("touch", vec![]),
    ] {
        let o = Command::new(require_tool(tool))
            .args(&args)
            .arg(&view)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{tool} succeeded on the view");
        assert!(err.contains("Read-only file system"), "{tool}: {err}");
    }
    assert!(cmp(&view, &tmp.path().join("src.img")));
    let stats = m.stop();
    assert_eq!(num(&stats, "read_bytes"), data.len() as u64, "{stats}");
    assert!(!is_mounted(&view));
    assert_eq!(
        std::fs::read(&view).unwrap(),
        b"",
        "the mountpoint file stays"
    );

    // A file with contents, a directory, a missing object: refused, and
    // nothing changed or left mounted.
    let full = tmp.path().join("full.img");
    std::fs::write(&full, b"keep me").unwrap();
    let dir = tmp.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    let missing = tmp.path().join("missing.img");
    for (image, at, want) in [
        ("s3://imgs/a.img", &full, "not empty"),
        ("s3://imgs/a.img", &dir, "not a regular file"),
        ("s3://imgs/none.img", &missing, "none.img"),
        ("imgs", &missing, "s3://BUCKET/KEY"),
    ] {
        let o = Command::new(strato_bin())
            .args(["mount", image])
            .arg(at)
            .args(["--endpoint", &endpoint(port), "--cache"])
            .arg(tmp.path().join("cache"))
            .env("STRATO_ACCESS_KEY", KEY_A)
            .env("STRATO_SECRET_KEY", KEY_S)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "mount of {image} on {at:?} succeeded");
        assert!(err.contains(want), "{image} on {at:?}: {err}");
        assert!(!is_mounted(at));
    }
    assert_eq!(std::fs::read(&full).unwrap(), b"keep me");
    assert!(!missing.exists(), "a failed mount left its mountpoint");

    // vm load --lazy: a bad object or URL, or no cache, is refused before
    // any QEMU is touched, and leaves no view behind.
    let qmp = tmp.path().join("no-qemu.sock");
    for (image, with_cache, want) in [
        ("s3://imgs/none.img", true, "none.img"),
        ("imgs", true, "s3://BUCKET/KEY"),
        ("s3://imgs/a.img", false, "--cache"),
    ] {
        let mut cmd = Command::new(strato_bin());
        cmd.args(["vm", "load", "--lazy", "--qmp"])
            .arg(&qmp)
            .arg(image)
            .args(["--endpoint", &endpoint(port), "--view"])
            .arg(&missing)
            .env("STRATO_ACCESS_KEY", KEY_A)
            .env("STRATO_SECRET_KEY", KEY_S);
        if with_cache {
            cmd.arg("--cache").arg(tmp.path().join("cache"));
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "vm load --lazy {image} succeeded");
        assert!(err.contains(want), "vm load --lazy {image}: {err}");
        assert!(!missing.exists() && !is_mounted(&missing));
    }
}

#[test]
fn upstream_killed_gives_eio_then_recovers() {
    let (tmp, st, data, port, server) = image_server(16 << 20, 33);
    let src = tmp.path().join("src.img");
    let view = tmp.path().join("a.img");
    let mut m = Mount::start(
        &endpoint(port),
        "s3://imgs/a.img",
        &tmp.path().join("cache"),
        &view,
        &[],
    );
    let out = tmp.path().join("part.raw");
    let (ok, err) = dd_direct(&view, &out, 0, 1);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), &data[..1 << 20]);

    drop(server);
    // Never fetched: EIO, never other bytes (through the page cache too).
    let (ok, err) = dd_direct(&view, &out, 8, 1);
    assert!(!ok && err.contains("Input/output error"), "{err}");
    let o = Command::new(require_tool("cmp"))
        .arg(&view)
        .arg(&src)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && text.contains("Input/output error"),
        "{text}"
    );
    // What is local still reads.
    let (ok, err) = dd_direct(&view, &out, 0, 1);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), &data[..1 << 20]);

    let _server = serve(&st, port);
    let (ok, err) = dd_direct(&view, &out, 8, 1);
    assert!(ok, "after upstream came back: {err}");
    assert_eq!(std::fs::read(&out).unwrap(), &data[8 << 20..9 << 20]);
    assert!(cmp(&view, &src));
    let stats = m.stop();
    eprintln!("stats: {stats}");
    assert!(num(&stats, "read_errors") >= 2, "{stats}");
    assert_eq!(num(&stats, "fetched_bytes"), data.len() as u64, "{stats}");
}

#[test]
fn sigterm_unmounts_even_while_a_reader_holds_the_file() {
    let (tmp, _st, data, port, _server) = image_server(4 << 20, 34);
    let view = tmp.path().join("a.img");
    let cache = tmp.path().join("cache");
    let mut m = Mount::start(&endpoint(port), "s3://imgs/a.img", &cache, &view, &[]);
    let held = std::fs::File::open(&view).unwrap();
    let stats = m.stop();
    assert_eq!(num(&stats, "reads"), 0, "{stats}");
    assert!(!is_mounted(&view), "the mount outlived strato mount");
    assert!(!view.exists());
    // The held descriptor no longer reads the image (an error, not bytes).
    let mut buf = vec![0u8; 4096];
    let r = std::os::unix::fs::FileExt::read_at(&held, &mut buf, 0);
    assert!(r.is_err() || r.unwrap() == 0, "read after unmount");
    drop(held);

    // SIGINT unmounts too, and the same path mounts again with the cache
    // the first mount left.
    let mut m = Mount::start(&endpoint(port), "s3://imgs/a.img", &cache, &view, &[]);
    let out = tmp.path().join("copy.raw");
    let (ok, err) = dd_direct(&view, &out, 0, 4);
    assert!(ok, "{err}");
    assert_eq!(md5_file(&out), md5_hex(&data));
    let p = m.proc.take().unwrap();
    run_tool(Command::new("kill").args(["-INT", &p.0.id().to_string()]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut p = p;
    while p.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no exit on SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!is_mounted(&view), "SIGINT left the mount");

    // A killed mount leaves a dead mountpoint; a new mount there says so.
    let mut m = Mount::start(&endpoint(port), "s3://imgs/a.img", &cache, &view, &[]);
    let mut p = m.proc.take().unwrap();
    p.0.kill().unwrap();
    p.0.wait().unwrap();
    let o = Command::new(strato_bin())
        .args(["mount", "s3://imgs/a.img"])
        .arg(&view)
        .args(["--endpoint", &endpoint(port), "--cache"])
        .arg(&cache)
        .env("STRATO_ACCESS_KEY", KEY_A)
        .env("STRATO_SECRET_KEY", KEY_S)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("stale mount"), "{err}");
    drop(m); // umount -l of the dead mount
    assert!(!is_mounted(&view));
}

/// `nbd serve --file`: one pseudo image behind an NBD socket and a file,
/// so a chunk an NBD client fetched is local for file readers and back.
#[test]
fn nbd_serve_with_a_file_view_shares_its_cache() {
    let (tmp, _st, data, port, _server) = image_server(8 << 20, 35);
    let src = tmp.path().join("src.img");
    let view = tmp.path().join("a.img");
    let sock = tmp.path().join("nbd.sock");
    let mut child = Command::new(strato_bin())
        .args([
            "--json",
            "nbd",
            "serve",
            "--image",
            "s3://imgs/a.img",
            "--name",
            "img",
        ])
        .args(["--endpoint", &endpoint(port), "--cache"])
        .arg(tmp.path().join("cache"))
        .arg("--socket")
        .arg(&sock)
        .arg("--file")
        .arg(&view)
        .env("STRATO_ACCESS_KEY", KEY_A)
        .env("STRATO_SECRET_KEY", KEY_S)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let p = Proc(child);
    // Unmounts (umount -l) if the test fails before the server does.
    let _guard = Mount {
        proc: None,
        path: view.clone(),
        lines: None,
    };
    assert!(lines.next().unwrap().unwrap().contains("nbd+unix"));
    let second = lines.next().unwrap().unwrap();
    assert_eq!(
        second,
        format!("strato nbd serving file {}", view.display())
    );
    assert!(is_mounted(&view));
    // The first half through NBD, then the whole file through the view.
    let url = format!("nbd+unix:///img?socket={}", sock.display());
    run_tool(
        Command::new(require_tool("qemu-io"))
            .args(["-r", "-f", "raw", "-c", "read 0 4M"])
            .arg(&url),
    );
    assert!(cmp(&view, &src));
    run_tool(Command::new("kill").args(["-TERM", &p.0.id().to_string()]));
    let stats: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    drop(p);
    eprintln!("nbd + file stats: {stats}");
    assert_eq!(num(&stats, "fetched_bytes"), data.len() as u64, "{stats}");
    assert!(num(&stats, "cache_hits") > 0, "{stats}");
    assert!(!is_mounted(&view));
}

fn strato_load(server: &Server, args: &[&str]) -> Value {
    let mut full = vec![
        "vm",
        "load",
        "--endpoint",
        &server.endpoint,
        "--access-key",
        &server.access_key,
        "--secret-key",
        &server.secret_key,
    ];
    full.extend_from_slice(args);
    server.strato.json(&full)
}

/// A saved guest restored through the file view: QEMU's mapped-ram load
/// reads the view, the guest runs with its memory intact; then two clones
/// on one node load from one `strato mount` and each page moves once.
#[test]
fn lazy_restore_of_a_saved_guest_and_two_clones_through_one_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Strato::new("redb");
    repo.ok(&["mb", "vms"]);
    let spec = VmSpec::new("saved", 41);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    let data_md5 = src.md5("/tmp/data");
    src.run("echo saved-state > /tmp/marker");
    let qmp = src.tool_qmp_path();
    let save = repo.json(&[
        "vm",
        "save",
        "--qmp",
        qmp.to_str().unwrap(),
        "vms/suspended",
    ]);
    eprintln!("save: {save}");
    drop(src);
    let saved_size = save["size"].as_u64().unwrap();
    let server = Server::start_with(repo, &[]);

    // Baseline: what a full pull of the save moves.
    let pulled = server.strato.json(&[
        "pull",
        "s3://vms/suspended",
        "--endpoint",
        &server.endpoint,
        "--access-key",
        &server.access_key,
        "--secret-key",
        &server.secret_key,
        "--cache",
        dir.path().join("pull-cache").to_str().unwrap(),
    ]);
    eprintln!("pull: {pulled}");
    let pull_bytes = pulled["fetched_bytes"].as_u64().unwrap();

    // One lazy clone on a node of its own.
    let mut clone_spec = spec.clone();
    clone_spec.name = "lazy0".into();
    let host = dir.path().join("host0");
    let mut vm = Qemu::start(&clone_spec, &host.join("vm"), Some("defer"));
    let r = strato_load(
        &server,
        &[
            "--qmp",
            vm.tool_qmp_path().to_str().unwrap(),
            "--lazy",
            "s3://vms/suspended",
            "--cache",
            host.join("cache").to_str().unwrap(),
            "--view",
            host.join("view.ram").to_str().unwrap(),
        ],
    );
    eprintln!("lazy load: {r}");
    assert_eq!(r["qemu"]["vm_status"], "running", "{r}");
    assert_eq!(vm.md5("/tmp/data"), data_md5);
    assert_eq!(vm.run("cat /tmp/marker").trim(), "saved-state");
    let before = r["fetched_bytes_before_running"].as_u64().unwrap();
    assert_eq!(r["size"].as_u64().unwrap(), saved_size);
    assert!(before > 0 && before <= saved_size, "{r}");
    assert!(
        !host.join("view.ram").exists(),
        "the view was not unmounted"
    );
    eprintln!(
        "lazy restore: {before} bytes fetched before the guest ran, of a {saved_size}-byte save; \
         a full pull moves {pull_bytes}; QEMU read {} bytes; {} ms to running",
        r["read_bytes_before_running"], r["time_to_running_ms"]
    );
    drop(vm);

    // Two clones on one node, one view: each chunk comes from upstream once.
    let host = dir.path().join("host1");
    std::fs::create_dir_all(&host).unwrap();
    let view = host.join("suspended.ram");
    let mut m = Mount::start(
        &server.endpoint,
        "s3://vms/suspended",
        &host.join("cache"),
        &view,
        &[],
    );
    let mut vms: Vec<Qemu> = (1..=2)
        .map(|i| {
            let mut s = spec.clone();
            s.name = format!("lazy{i}");
            Qemu::start(&s, &host.join(format!("vm{i}")), Some("defer"))
        })
        .collect();
    let loads: Vec<_> = vms
        .iter()
        .map(|vm| {
            let mut cmd = server.strato.cmd();
            cmd.args(["--json", "vm", "load", "--qmp"])
                .arg(vm.tool_qmp_path())
                .arg(&view);
            std::thread::spawn(move || {
                let o = cmd.output().unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                serde_json::from_slice::<Value>(&o.stdout).unwrap()
            })
        })
        .collect();
    for l in loads {
        assert_eq!(l.join().unwrap()["vm_status"], "running");
    }
    for (i, vm) in vms.iter_mut().enumerate() {
        assert_eq!(vm.md5("/tmp/data"), data_md5, "clone {i}");
        vm.run(&format!("echo clone-{i} > /tmp/who"));
    }
    for (i, vm) in vms.iter_mut().enumerate() {
        assert_eq!(vm.run("cat /tmp/who").trim(), format!("clone-{i}"));
    }
    let stats = m.stop();
    eprintln!("two clones through one view: {stats}");
    // Two full loads, yet no more fetched than one load did on its own
    // (give or take the kernel's readahead), and never more than a pull.
    let fetched = num(&stats, "fetched_bytes");
    assert!(fetched <= pull_bytes, "{stats}");
    assert!(
        fetched <= before + before / 10,
        "{stats} vs one load's {before}"
    );
    assert!(num(&stats, "read_bytes") >= before, "{stats}");
    assert_eq!(num(&stats, "read_errors"), 0, "{stats}");
    drop(vms);
}
