//! Disk migration (non-shared storage) of real TCG guests through
//! `strato migrate disk-send|disk-recv` in the middle of QEMU's mirror job,
//! with the destination site holding the guest's image in a block-indexed
//! bucket, plus the memory migration through the memory agents. And the
//! faults: WAN dropped mid-copy, wrong bytes for an id, an id nobody
//! holds, requests out of the export's range.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod migrate_util;
mod qemu_util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use migrate_util::*;
use qemu_util::*;
use strato::image::nbd_client::NbdClient;
use strato::migrate::disk::wire::{read_frame, write_frame, DiskFrame, DiskOp, DISK_PROTOCOL};
use strato::qemu::mirror::{self, DestExport, MirrorPlan, MirrorSync};
use strato::qemu::qmp::QmpClient;
use strato::store::ChunkId;

const MIB: usize = 1 << 20;
/// The guest image: random data then zeros (a half-used disk).
const IMAGE_MIB: usize = 48;
const IMAGE_RANDOM_MIB: usize = 40;

/// A child process (agent, qemu-nbd) killed by its PID on drop.
struct Proc {
    child: Child,
    name: String,
    stderr: PathBuf,
}

impl Proc {
    /// Spawn; if `ready` is given, wait (bounded) for a stdout line
    /// containing it.
    fn spawn(mut cmd: Command, name: &str, stderr: &Path, ready: Option<&str>) -> Proc {
        let log = std::fs::File::create(stderr).expect("stderr log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let p = Proc {
            child,
            name: name.to_string(),
            stderr: stderr.to_path_buf(),
        };
        if let Some(want) = ready {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(l) if l.contains(want) => break,
                    Ok(_) => {}
                    Err(_) => panic!("{name} never printed {want:?}:\n{}", p.log()),
                }
            }
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait (bounded) for the exit; returns whether it succeeded.
    fn wait(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.success();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn strato_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(strato_bin());
    c.args(args);
    c
}

fn site_args(site: &Server) -> Vec<String> {
    vec![
        "--site".into(),
        site.endpoint.clone(),
        "--access-key".into(),
        site.access_key.clone(),
        "--secret-key".into(),
        site.secret_key.clone(),
    ]
}

/// The guest image at the destination site, in a block-indexed bucket
/// (block-aligned chunking), and on the source host as a raw file.
fn seeded_site(dir: &Path, seed: u64) -> (Server, PathBuf) {
    let mut data = random_bytes(IMAGE_RANDOM_MIB * MIB, seed);
    data.resize(IMAGE_MIB * MIB, 0);
    let base = dir.join("base.raw");
    std::fs::write(&base, &data).expect("writing the image");
    let st = Strato::new("redb");
    st.ok(&["mb", "--block-index", "images"]);
    st.put(&base, "images/base.raw", "block");
    (Server::start_with(st, &[]), base)
}

fn qemu_img(args: &[&str]) -> String {
    run_tool(Command::new(require_tool("qemu-img")).args(args))
}

/// md5 of a disk image's guest-visible bytes.
fn image_md5(path: &Path, format: &str, dir: &Path) -> String {
    let raw = dir.join(format!(
        "{}.flat",
        path.file_name().unwrap().to_string_lossy()
    ));
    qemu_img(&[
        "convert",
        "-U",
        "-f",
        format,
        "-O",
        "raw",
        path.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let sum = md5_file(&raw);
    let _ = std::fs::remove_file(raw);
    sum
}

/// The source (qcow2 overlay over the image, booted) and the destination
/// (an empty qcow2 of the same size, `-S`, waiting for the memory agent).
struct Pair {
    src: Qemu,
    dst: Qemu,
    src_disk: PathBuf,
    dst_disk: PathBuf,
    mem_send_report: PathBuf,
    mem_listen: String,
}

fn start_pair(dir: &Path, site: &Server, base: &Path, name: &str, seed: u64) -> Pair {
    start_pair_with(dir, site, base, name, seed, None)
}

/// As [`start_pair`]; with `dst_backing`, the destination's disk is an
/// empty overlay over that copy of the image (the destination has it).
fn start_pair_with(
    dir: &Path,
    site: &Server,
    base: &Path,
    name: &str,
    seed: u64,
    dst_backing: Option<&Path>,
) -> Pair {
    let src_disk = dir.join("src.qcow2");
    let dst_disk = dir.join("dst.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "raw",
        src_disk.to_str().unwrap(),
    ]);
    match dst_backing {
        Some(b) => qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            b.to_str().unwrap(),
            "-F",
            "raw",
            dst_disk.to_str().unwrap(),
        ]),
        None => qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            dst_disk.to_str().unwrap(),
            &format!("{IMAGE_MIB}M"),
        ]),
    };
    let spec = VmSpec::new(name, seed).with_disk(&src_disk, "qcow2");
    let src = Qemu::boot(&spec, &dir.join("src"));
    // The destination must not run before the mirror completed: -S, and
    // `cont` once the disk is there (as libvirt does).
    let mut dspec = VmSpec::new(name, seed).with_disk(&dst_disk, "qcow2");
    dspec.extra_args.push("-S".into());
    let mem_listen = format!("127.0.0.1:{}", free_port());
    let dst = Qemu::start(
        &dspec,
        &dir.join("dst"),
        Some(&recv_uri(
            &mem_listen,
            Some(site),
            &dir.join("mem-recv.json"),
            "",
        )),
    );
    Pair {
        src,
        dst,
        src_disk,
        dst_disk,
        mem_send_report: dir.join("mem-send.json"),
        mem_listen,
    }
}

/// The disk agents between the two QEMUs, and the plans of both sides.
struct DiskAgents {
    recv: Proc,
    send: Proc,
    plan: MirrorPlan,
    export: DestExport,
    send_report: PathBuf,
    recv_report: PathBuf,
}

fn start_disk_agents(
    rt: &tokio::runtime::Runtime,
    dst_qmp: &mut QmpClient,
    dir: &Path,
    site: &Server,
) -> DiskAgents {
    let export = DestExport {
        device: "virtio0".into(),
        host: "127.0.0.1".into(),
        port: free_port(),
        export: "disk0".into(),
        id: "strato-disk0".into(),
    };
    rt.block_on(mirror::export_destination(dst_qmp, &export))
        .expect("exporting the destination disk");
    let wan = format!("127.0.0.1:{}", free_port());
    let recv_report = dir.join("disk-recv.json");
    let send_report = dir.join("disk-send.json");
    let mut c = strato_cmd(&[
        "migrate",
        "disk-recv",
        "--insecure",
        "--listen",
        &wan,
        "--nbd",
        &format!("127.0.0.1:{}", export.port),
        "--export",
        &export.export,
        "--report",
        recv_report.to_str().unwrap(),
    ]);
    c.args(site_args(site));
    let recv = Proc::spawn(
        c,
        "disk-recv",
        &dir.join("disk-recv.log"),
        Some("listening"),
    );
    let nbd_port = free_port();
    let mut c = strato_cmd(&[
        "migrate",
        "disk-send",
        "--insecure",
        "--listen",
        &format!("127.0.0.1:{nbd_port}"),
        "--to",
        &wan,
        "--vm",
        "disk-vm",
        "--report",
        send_report.to_str().unwrap(),
    ]);
    c.args(site_args(site));
    let send = Proc::spawn(
        c,
        "disk-send",
        &dir.join("disk-send.log"),
        Some("NBD export"),
    );
    DiskAgents {
        recv,
        send,
        plan: MirrorPlan::new("virtio0", "127.0.0.1", nbd_port, "strato"),
        export,
        send_report,
        recv_report,
    }
}

fn connect_qmp(rt: &tokio::runtime::Runtime, vm: &Qemu) -> QmpClient {
    rt.block_on(QmpClient::connect_when_ready(
        &vm.tool_qmp_path(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    ))
    .expect("QMP tool socket")
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("report")).expect("JSON report")
}

/// Mirror READY, memory through the agents, mirror completed, destination
/// resumed; both disk agents finished cleanly. Returns their reports.
fn migrate_disk_and_memory(
    rt: &tokio::runtime::Runtime,
    p: &mut Pair,
    src_qmp: &mut QmpClient,
    dst_qmp: &mut QmpClient,
    agents: &mut DiskAgents,
    site: &Server,
    before_memory: impl FnOnce(&mut Qemu),
) -> (serde_json::Value, serde_json::Value) {
    rt.block_on(mirror::start_mirror(src_qmp, &agents.plan))
        .expect("starting the mirror");
    rt.block_on(mirror::wait_ready(
        src_qmp,
        &agents.plan.job,
        Duration::from_secs(120),
    ))
    .unwrap_or_else(|e| {
        panic!(
            "mirror not ready: {e}\nsend:\n{}\nrecv:\n{}",
            agents.send.log(),
            agents.recv.log()
        )
    });
    before_memory(&mut p.src);
    let uri = send_uri(&p.mem_listen, Some(site), "disk-vm", &p.mem_send_report, "");
    rt.block_on(mirror::finish(
        src_qmp,
        dst_qmp,
        &agents.plan,
        &agents.export,
        &uri,
        Duration::from_secs(180),
    ))
    .unwrap_or_else(|e| {
        panic!(
            "finishing the migration: {e}\nsend:\n{}\nrecv:\n{}\nmemory:\n{}",
            agents.send.log(),
            agents.recv.log(),
            agent_log(&p.mem_send_report)
        )
    });
    assert!(
        agents.send.wait(Duration::from_secs(60)),
        "disk-send failed:\n{}",
        agents.send.log()
    );
    assert!(
        agents.recv.wait(Duration::from_secs(60)),
        "disk-recv failed:\n{}",
        agents.recv.log()
    );
    (
        json_file(&agents.send_report),
        json_file(&agents.recv_report),
    )
}

/// md5 of `count` MiB of /dev/vda from `skip` MiB, read past the page cache.
fn guest_md5(vm: &mut Qemu, skip: usize, count: Option<usize>) -> String {
    vm.run("sync; echo 3 > /proc/sys/vm/drop_caches");
    let count = count.map(|c| format!(" count={c}")).unwrap_or_default();
    let out = vm.run(&format!(
        "dd if=/dev/vda bs=1M skip={skip}{count} 2>/dev/null | md5sum"
    ));
    let sum = out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(sum.len(), 32, "md5sum printed {out:?}");
    sum
}

#[test]
fn guest_disk_migrates_with_image_blocks_by_hash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (site, base) = seeded_site(d, 71);
    let mut p = start_pair(d, &site, &base, "disk1", 3);
    // The guest writes 4 MiB of new data over the image.
    p.src
        .run("dd if=/dev/urandom of=/dev/vda bs=1M count=4 seek=8 conv=fsync 2>/dev/null");
    let region = guest_md5(&mut p.src, 8, Some(4));

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut sq = connect_qmp(&rt, &p.src);
    let mut dq = connect_qmp(&rt, &p.dst);
    let mut agents = start_disk_agents(&rt, &mut dq, d, &site);
    let (sent, recv) =
        migrate_disk_and_memory(&rt, &mut p, &mut sq, &mut dq, &mut agents, &site, |_| {});
    eprintln!("disk-send: {sent:#}\ndisk-recv: {recv:#}");

    p.dst.wait_status("running", Duration::from_secs(60));
    assert_eq!(p.src.status(), "postmigrate");
    assert_eq!(guest_md5(&mut p.dst, 8, Some(4)), region, "written region");
    let whole = guest_md5(&mut p.dst, 0, None);
    assert_eq!(
        whole,
        image_md5(&p.src_disk, "qcow2", d),
        "destination disk (guest view) vs the source's final disk"
    );
    drop(p.dst);
    assert_eq!(image_md5(&p.dst_disk, "qcow2", d), whole);

    assert_eq!(sent["completed"], true);
    assert_eq!(recv["completed"], true);
    let image_blocks = (IMAGE_RANDOM_MIB * MIB / 4096) as u64;
    let by_hash = sent["blocks"]["by_hash"].as_u64().unwrap();
    assert!(
        by_hash * 10 >= image_blocks * 8,
        "only {by_hash} of the image's {image_blocks} non-zero blocks went by hash"
    );
    // The guest's 4 MiB are new: sent in full, then stored at the site.
    let literal = sent["blocks"]["literal_compressed"].as_u64().unwrap()
        + sent["blocks"]["literal_raw"].as_u64().unwrap();
    assert!(literal >= 1024, "{literal} literal blocks");
    assert!(recv["site_stored"].as_u64().unwrap() >= 1024, "{recv}");
    assert_eq!(
        recv["blocks"]["by_hash"], sent["blocks"]["by_hash"],
        "receiver resolved every id"
    );
    // The WAN carried far less than the disk.
    let wan = sent["wan"]["total"].as_u64().unwrap();
    assert!(
        wan < (IMAGE_MIB * MIB / 4) as u64,
        "WAN {wan} bytes for a {IMAGE_MIB} MiB disk"
    );
}

/// The destination already has the backing image: its disk is an overlay
/// over it, and the mirror (sync=top) moves only what the guest wrote.
#[test]
fn destination_with_the_backing_image_gets_only_the_top_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (site, base) = seeded_site(d, 74);
    let dst_base = d.join("dst-base.raw");
    std::fs::copy(&base, &dst_base).expect("copying the image");
    let mut p = start_pair_with(d, &site, &base, "disk4", 6, Some(&dst_base));
    p.src
        .run("dd if=/dev/urandom of=/dev/vda bs=1M count=4 seek=20 conv=fsync 2>/dev/null");
    let region = guest_md5(&mut p.src, 20, Some(4));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut sq = connect_qmp(&rt, &p.src);
    let mut dq = connect_qmp(&rt, &p.dst);
    let mut agents = start_disk_agents(&rt, &mut dq, d, &site);
    agents.plan.sync = MirrorSync::Top;
    let (sent, _) =
        migrate_disk_and_memory(&rt, &mut p, &mut sq, &mut dq, &mut agents, &site, |_| {});
    eprintln!("disk-send: {sent:#}");
    p.dst.wait_status("running", Duration::from_secs(60));
    assert_eq!(guest_md5(&mut p.dst, 20, Some(4)), region);
    let whole = guest_md5(&mut p.dst, 0, None);
    assert_eq!(whole, image_md5(&p.src_disk, "qcow2", d));
    let written = sent["bytes_written"].as_u64().unwrap();
    assert!(
        (4 * MIB as u64..=8 * MIB as u64).contains(&written),
        "sync=top moved {written} bytes for 4 MiB written"
    );
}

#[test]
fn guest_writing_during_the_copy_ends_with_identical_disks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (site, base) = seeded_site(d, 72);
    let mut p = start_pair(d, &site, &base, "disk2", 4);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut sq = connect_qmp(&rt, &p.src);
    let mut dq = connect_qmp(&rt, &p.dst);
    let mut agents = start_disk_agents(&rt, &mut dq, d, &site);
    // A slow bulk copy (8 MiB/s), so the guest's writes land both behind
    // and ahead of it, and after READY.
    agents.plan.speed = Some(8 << 20);
    // Bounded writer loop in the guest: 30 rounds of 256 KiB spread over
    // the disk, with pauses (`& true`: the harness appends `; echo ...`).
    p.src.run(
        "(i=0; while [ $i -lt 30 ]; do dd if=/dev/urandom of=/dev/vda bs=64k count=4 \
         seek=$(( (i * 97) % 700 )) conv=fsync 2>/dev/null; i=$((i+1)); sleep 0.2; done; \
         echo writer-done > /tmp/writer) >/dev/null 2>&1 & true",
    );
    let (sent, _recv) =
        migrate_disk_and_memory(&rt, &mut p, &mut sq, &mut dq, &mut agents, &site, |src| {
            // The writer must be done before the memory moves: it would go
            // on writing at the destination otherwise.
            let deadline = Instant::now() + Duration::from_secs(120);
            while src.run("cat /tmp/writer 2>/dev/null; true").trim() != "writer-done" {
                assert!(Instant::now() < deadline, "guest writer never finished");
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    eprintln!("disk-send: {sent:#}");
    assert_eq!(sent["completed"], true);
    assert!(sent["flushes"].as_u64().unwrap() >= 1, "{sent}");
    p.dst.wait_status("running", Duration::from_secs(60));
    let whole = guest_md5(&mut p.dst, 0, None);
    assert_eq!(whole, image_md5(&p.src_disk, "qcow2", d));
    drop(p.dst);
    assert_eq!(image_md5(&p.dst_disk, "qcow2", d), whole);
}

#[test]
fn wan_dropped_mid_copy_fails_the_mirror_and_the_source_keeps_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (site, base) = seeded_site(d, 73);
    let mut p = start_pair(d, &site, &base, "disk3", 5);
    let before = guest_md5(&mut p.src, 0, Some(16));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut sq = connect_qmp(&rt, &p.src);
    let mut dq = connect_qmp(&rt, &p.dst);
    let mut agents = start_disk_agents(&rt, &mut dq, d, &site);
    // 2 MiB/s: the bulk copy of 48 MiB takes far longer than the drop.
    agents.plan.speed = Some(2 << 20);
    rt.block_on(mirror::start_mirror(&mut sq, &agents.plan))
        .expect("starting the mirror");
    std::thread::sleep(Duration::from_millis(1500));
    // The WAN goes away: the receiver dies.
    agents.recv.kill();
    let err = rt
        .block_on(mirror::wait_ready(
            &mut sq,
            &agents.plan.job,
            Duration::from_secs(120),
        ))
        .expect_err("the mirror must fail once the WAN is gone");
    eprintln!("mirror failed as expected: {err}");
    assert!(
        matches!(err, mirror::DiskMirrorError::JobFailed { .. }),
        "{err}"
    );
    // disk-send stops with an error and reports nothing as done.
    assert!(
        !agents.send.wait(Duration::from_secs(60)),
        "disk-send succeeded after losing the WAN"
    );
    assert!(
        !agents.send_report.exists(),
        "disk-send wrote a report after failing"
    );
    assert!(
        agents.send.log().contains("receiver"),
        "{}",
        agents.send.log()
    );
    // The source guest runs on, its disk intact and writable.
    assert_eq!(p.src.status(), "running");
    assert_eq!(guest_md5(&mut p.src, 0, Some(16)), before);
    p.src
        .run("dd if=/dev/urandom of=/dev/vda bs=64k count=1 seek=5 conv=fsync 2>/dev/null");
    assert_eq!(p.src.run("echo alive").trim(), "alive");
}

/// A raw file exported writable by qemu-nbd, filled with 0xAA.
fn qemu_nbd_export(dir: &Path, mib: usize) -> (Proc, PathBuf, u16) {
    let file = dir.join("dst.raw");
    std::fs::write(&file, vec![0xAAu8; mib * MIB]).expect("dst file");
    let port = free_port();
    let mut c = Command::new(require_tool("qemu-nbd"));
    c.args(["-f", "raw", "-x", "dst", "-b", "127.0.0.1", "-t", "-p"])
        .arg(port.to_string())
        .arg(&file);
    let p = Proc::spawn(c, "qemu-nbd", &dir.join("qemu-nbd.log"), None);
    // Wait until it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, file, port)
}

fn start_recv(dir: &Path, nbd_port: u16, site: Option<&Server>) -> (Proc, String) {
    start_recv_with(dir, nbd_port, site, &[])
}

fn start_recv_with(
    dir: &Path,
    nbd_port: u16,
    site: Option<&Server>,
    extra: &[&str],
) -> (Proc, String) {
    let wan = format!("127.0.0.1:{}", free_port());
    let mut c = strato_cmd(&[
        "migrate",
        "disk-recv",
        "--listen",
        &wan,
        "--nbd",
        &format!("127.0.0.1:{nbd_port}"),
        "--export",
        "dst",
        "--wait-ms",
        "300",
    ]);
    if let Some(s) = site {
        c.args(site_args(s));
    }
    // Plain TCP unless the caller gives the TLS files.
    if !extra.iter().any(|a| a.starts_with("--tls-")) {
        c.arg("--insecure");
    }
    c.args(extra);
    let p = Proc::spawn(c, "disk-recv", &dir.join("recv.log"), Some("listening"));
    (p, wan)
}

/// Act as a (misbehaving) sender: greet, send one batch, return the
/// receiver's last word.
fn fake_sender_batch(wan: &str, ops: Vec<DiskOp>, blob: Vec<u8>) -> (bool, String) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(wan).await.expect("connect");
        write_frame(
            &mut s,
            &DiskFrame::Hello {
                protocol: DISK_PROTOCOL,
                vm: "fake".into(),
                group: None,
            },
        )
        .await
        .unwrap();
        let (w, _) = read_frame(&mut s).await.unwrap();
        assert!(matches!(w, DiskFrame::Welcome { .. }), "{w:?}");
        write_frame(
            &mut s,
            &DiskFrame::Batch {
                seq: 1,
                ops,
                raw_len: blob.len() as u32,
                compressed: false,
                blob: blob.into(),
            },
        )
        .await
        .unwrap();
        write_frame(&mut s, &DiskFrame::End).await.unwrap();
        let deadline = Duration::from_secs(30);
        loop {
            let (f, _) = tokio::time::timeout(deadline, read_frame(&mut s))
                .await
                .expect("receiver answers")
                .expect("a frame");
            match f {
                DiskFrame::Done { ok, message } => return (ok, message),
                // This sender holds nothing it could give.
                DiskFrame::Pull(ids) => {
                    let none = ids.into_iter().map(|i| (i, None)).collect();
                    write_frame(&mut s, &DiskFrame::Pulled(none)).await.unwrap();
                }
                _ => {}
            }
        }
    })
}

#[test]
fn receiver_rejects_wrong_bytes_unknown_ids_and_out_of_range_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let site = Server::start("redb");
    let (_nbd, file, port) = qemu_nbd_export(d, 4);
    let untouched = |what: &str| {
        let now = std::fs::read(&file).expect("dst file");
        assert!(
            now.iter().all(|&b| b == 0xAA),
            "{what}: the destination was written"
        );
    };

    let good = vec![1u8; 4096];
    let cases = [
        // Literal bytes that do not hash to the id they claim.
        (
            "wrong bytes",
            DiskOp::Block {
                offset: 0,
                id: ChunkId::of(&good),
            },
            vec![2u8; 4096],
            "do not hash",
        ),
        // An id the site does not hold: a loud failure, never zeros.
        (
            "unknown id",
            DiskOp::Site {
                offset: 4096,
                id: ChunkId::of(b"nobody has this"),
            },
            Vec::new(),
            "unknown",
        ),
        // Same for a group claim whose block never reached the site.
        (
            "unsent group block",
            DiskOp::Group {
                offset: 8192,
                id: ChunkId::of(b"claimed, never sent"),
            },
            Vec::new(),
            "unknown",
        ),
        // A write beyond the export's end.
        (
            "out of range",
            DiskOp::Bytes {
                offset: 4 * MIB as u64 - 2,
                len: 4,
            },
            vec![9u8; 4],
            "beyond",
        ),
    ];
    for (what, op, blob, want) in cases {
        let (mut recv, wan) = start_recv(d, port, Some(&site));
        let (ok, msg) = fake_sender_batch(&wan, vec![op], blob);
        assert!(!ok && msg.contains(want), "{what}: {msg}");
        assert!(
            !recv.wait(Duration::from_secs(30)),
            "{what}: receiver succeeded"
        );
        untouched(what);
    }
}

#[test]
fn sender_export_refuses_out_of_range_and_flushes_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_nbd, file, port) = qemu_nbd_export(d, 4);
    let (mut recv, wan) = start_recv(d, port, None);
    let nbd_port = free_port();
    let report = d.join("send.json");
    let c = strato_cmd(&[
        "migrate",
        "disk-send",
        "--insecure",
        "--listen",
        &format!("127.0.0.1:{nbd_port}"),
        "--to",
        &wan,
        "--report",
        report.to_str().unwrap(),
    ]);
    let mut send = Proc::spawn(c, "disk-send", &d.join("send.log"), Some("NBD export"));

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let data = random_bytes(64 * 1024, 5);
    rt.block_on(async {
        let c = NbdClient::connect(&format!("127.0.0.1:{nbd_port}"), "strato")
            .await
            .expect("NBD connect to disk-send");
        assert_eq!(c.size(), 4 * MIB as u64, "size learnt from the receiver");
        // Out of range: an NBD error, and the connection lives on.
        let r = c.write(4 * MIB as u64 - 512, &[1u8; 1024]).await.unwrap();
        assert!(r.wait().await.is_err(), "write past the end accepted");
        let r = c.write_zeroes(8 * MIB as u64, 4096).await.unwrap();
        assert!(r.wait().await.is_err(), "zeroes past the end accepted");
        // In range: written, and durable at the destination once the
        // flush returns.
        c.write(MIB as u64, &data)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        c.write_zeroes(0, 8192).await.unwrap().wait().await.unwrap();
        c.flush()
            .await
            .unwrap()
            .wait()
            .await
            .expect("end-to-end flush");
        let now = std::fs::read(&file).expect("dst file");
        assert_eq!(&now[MIB..MIB + data.len()], &data[..], "flushed data");
        assert!(now[..8192].iter().all(|&b| b == 0), "zeroed range");
        assert!(now[8192..MIB].iter().all(|&b| b == 0xAA), "rest untouched");
        c.disconnect().await.unwrap();
    });
    assert!(send.wait(Duration::from_secs(30)), "{}", send.log());
    assert!(recv.wait(Duration::from_secs(30)), "{}", recv.log());
    let r = json_file(&report);
    assert_eq!(r["completed"], true);
    assert_eq!(r["blocks"]["zero"], 2);
    assert_eq!(
        r["blocks"]["literal_raw"].as_u64().unwrap()
            + r["blocks"]["literal_compressed"].as_u64().unwrap(),
        16
    );
}

/// disk-send with a site and a group, writing to `wan`; its NBD port.
fn start_group_sender(dir: &Path, wan: &str, site: &Server, group: &str) -> (Proc, u16, PathBuf) {
    let nbd_port = free_port();
    let report = dir.join("send.json");
    let mut c = strato_cmd(&[
        "migrate",
        "disk-send",
        "--insecure",
        "--listen",
        &format!("127.0.0.1:{nbd_port}"),
        "--to",
        wan,
        "--group",
        group,
        "--report",
        report.to_str().unwrap(),
    ]);
    c.args(site_args(site));
    let p = Proc::spawn(c, "disk-send", &dir.join("send.log"), Some("NBD export"));
    (p, nbd_port, report)
}

/// Write `data` at `offset` through a disk-send export, flush, disconnect.
fn write_through(rt: &tokio::runtime::Runtime, nbd_port: u16, offset: u64, data: &[u8]) {
    rt.block_on(async {
        let c = NbdClient::connect(&format!("127.0.0.1:{nbd_port}"), "strato")
            .await
            .expect("NBD connect to disk-send");
        c.write(offset, data).await.unwrap().wait().await.unwrap();
        c.flush().await.unwrap().wait().await.expect("flush");
        c.disconnect().await.unwrap();
    });
}

/// Two senders of one group write the same blocks: the first claims them
/// but its receiver never stores them (as if it died); the second sends
/// them by id, and its receiver, not finding them at the site, pulls them
/// from its own sender instead of failing or guessing. Then it stores them
/// for the group, so a third sender finds them at the site.
#[test]
fn group_blocks_whose_claimant_never_stored_them_are_pulled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = Server::start("redb");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let data = random_bytes(256 * 1024, 9);
    let blocks = (data.len() / 4096) as u64;
    let mut reports = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (_nbd, file, port) = qemu_nbd_export(&d, 4);
        let extra: &[&str] = if i == 0 { &["--no-store"] } else { &[] };
        let (mut recv, wan) = start_recv_with(&d, port, Some(&site), extra);
        let (mut send, nbd_port, report) = start_group_sender(&d, &wan, &site, "g1");
        write_through(&rt, nbd_port, MIB as u64, &data);
        assert!(send.wait(Duration::from_secs(30)), "{}", send.log());
        assert!(recv.wait(Duration::from_secs(30)), "{}", recv.log());
        let now = std::fs::read(&file).unwrap();
        assert_eq!(
            &now[MIB..MIB + data.len()],
            &data[..],
            "{name}: disk content"
        );
        reports.push(json_file(&report));
    }
    let b = |r: &serde_json::Value, k: &str| r["blocks"][k].as_u64().unwrap();
    let literal = |r: &serde_json::Value| b(r, "literal_raw") + b(r, "literal_compressed");
    assert_eq!(literal(&reports[0]), blocks, "first sender won every claim");
    assert_eq!(b(&reports[1], "claimed_by_other"), blocks, "{}", reports[1]);
    assert_eq!(literal(&reports[1]), 0);
    assert_eq!(b(&reports[2], "by_hash"), blocks, "{}", reports[2]);
}

fn disk_send_cmd(nbd_port: u16, wan: &str, report: &Path, link: &[String]) -> Command {
    let mut c = strato_cmd(&[
        "migrate",
        "disk-send",
        "--listen",
        &format!("127.0.0.1:{nbd_port}"),
        "--to",
        wan,
        "--connect-timeout",
        "5",
        "--report",
        report.to_str().unwrap(),
    ]);
    c.args(link);
    c
}

#[test]
fn disk_migration_over_mutual_tls_refuses_strangers_and_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_nbd, file, port) = qemu_nbd_export(d, 4);
    let ours = migration_certs(&d.join("ca"), "127.0.0.1");
    let theirs = migration_certs(&d.join("other-ca"), "127.0.0.1");
    let ours_ref: Vec<&str> = ours.iter().map(String::as_str).collect();
    let report = d.join("send.json");
    let untouched = |why: &str| {
        let now = std::fs::read(&file).expect("dst file");
        assert!(now.iter().all(|&b| b == 0xAA), "{why}: destination written");
    };

    // Neither TLS files nor --insecure: refused before anything connects.
    let out = strato_cmd(&[
        "migrate",
        "disk-send",
        "--to",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mutual TLS") && err.contains("--insecure"),
        "{err}"
    );
    let out = strato_cmd(&[
        "migrate",
        "disk-recv",
        "--listen",
        "127.0.0.1:0",
        "--nbd",
        "127.0.0.1:9",
        "--export",
        "dst",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mutual TLS"));

    // A peer that connects and says nothing holds the receiver only as long
    // as a handshake may take.
    let (mut recv, wan) = start_recv_with(d, port, None, &ours_ref);
    let silent = std::net::TcpStream::connect(&wan).unwrap();
    assert!(!recv.wait(Duration::from_secs(30)), "silent peer accepted");
    assert!(recv.log().contains("did not finish"), "{}", recv.log());
    drop(silent);
    untouched("silent peer");

    // A plaintext sender, then one whose certificate another CA signed:
    // each refused by the TLS receiver, which ends; nothing is written.
    for (what, link) in [
        ("plaintext sender", vec!["--insecure".to_string()]),
        ("sender of another CA", theirs.clone()),
    ] {
        let (mut recv, wan) = start_recv_with(d, port, None, &ours_ref);
        let mut send = Proc::spawn(
            disk_send_cmd(free_port(), &wan, &report, &link),
            "disk-send",
            &d.join("send.log"),
            None,
        );
        assert!(!recv.wait(Duration::from_secs(30)), "{what} accepted");
        assert!(!send.wait(Duration::from_secs(30)), "{what} went on");
        let log = recv.log();
        assert!(log.contains("TLS handshake"), "{what}: {log}");
        untouched(what);
    }

    // A TLS sender of our CA against a receiver of another: the sender
    // refuses the receiver's certificate.
    let theirs_ref: Vec<&str> = theirs.iter().map(String::as_str).collect();
    let (mut recv, wan) = start_recv_with(d, port, None, &theirs_ref);
    let mut send = Proc::spawn(
        disk_send_cmd(free_port(), &wan, &report, &ours),
        "disk-send",
        &d.join("send.log"),
        None,
    );
    assert!(
        !send.wait(Duration::from_secs(30)),
        "receiver of another CA trusted"
    );
    let log = send.log();
    assert!(
        log.contains("TLS handshake") && log.contains("certificate"),
        "{log}"
    );
    assert!(!recv.wait(Duration::from_secs(30)));
    untouched("receiver of another CA");

    // Both of our CA: the disk migrates over TLS.
    let (mut recv, wan) = start_recv_with(d, port, None, &ours_ref);
    let nbd_port = free_port();
    let mut send = Proc::spawn(
        disk_send_cmd(nbd_port, &wan, &report, &ours),
        "disk-send",
        &d.join("send.log"),
        Some("NBD export"),
    );
    let data = random_bytes(256 * 1024, 9);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = NbdClient::connect(&format!("127.0.0.1:{nbd_port}"), "strato")
            .await
            .expect("NBD connect to disk-send");
        c.write(MIB as u64, &data)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
        c.flush()
            .await
            .unwrap()
            .wait()
            .await
            .expect("end-to-end flush");
        c.disconnect().await.unwrap();
    });
    assert!(send.wait(Duration::from_secs(30)), "{}", send.log());
    assert!(recv.wait(Duration::from_secs(30)), "{}", recv.log());
    let now = std::fs::read(&file).expect("dst file");
    assert_eq!(&now[MIB..MIB + data.len()], &data[..], "migrated over TLS");
    assert_eq!(json_file(&report)["completed"], true);
}
