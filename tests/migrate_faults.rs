//! Faults and bad input of the migration agents: content nobody can
//! produce, wrong bytes for an id, a claimed page whose sender died, a
//! stream the sender does not understand, postcopy, and the WAN connection
//! dropping in the middle of a live migration, the site going silent
//! right after QEMU stops the guest; and pages kept at the site (`--keep`)
//! surviving garbage collection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod migrate_util;
mod qemu_util;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use migrate_util::*;
use qemu_util::*;
use strato::migrate::memory::wire::{Frame, Op, PROTOCOL};
use strato::qemu::stream::{tokenize, Token, PAGE_SIZE};
use strato::store::ChunkId;

/// A real migration stream: a booting guest's state, written by QEMU to a file.
fn capture(dir: &Path) -> Vec<u8> {
    let mut spec = VmSpec::new("capture", 3);
    spec.data_mib = 4;
    let mut vm = Qemu::boot(&spec, &dir.join("capture-vm"));
    let file = dir.join("capture.qevm");
    let info = vm.migrate(&format!("exec:cat > {}", file.display()));
    assert_eq!(info.status, "completed");
    std::fs::read(&file).expect("capture")
}

/// `strato migrate recv` on a free port writing to `out`; returns it and the port.
fn spawn_receiver(out: &Path, extra: &[&str]) -> (std::process::Child, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(strato_bin())
        .args(["migrate", "recv", "--insecure", "--listen", &listen])
        .args(extra)
        .stdout(std::fs::File::create(out).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the receiver");
    (child, listen)
}

/// A fake sender names a page by id that neither the receiver's site nor
/// the sender can produce (answer `None`), or answers with wrong bytes.
fn receiver_facing(answer: Option<Vec<u8>>) -> (bool, String, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (child, listen) = spawn_receiver(&out, &["--wait-ms", "100"]);
    let mut s = connect(&listen);
    let id = ChunkId::of(&[7u8; PAGE_SIZE]);
    let frames = [
        Frame::Hello {
            protocol: PROTOCOL,
            vm: "fake".into(),
            group: None,
            generation: 1,
            codec: None,
        },
        Frame::Batch {
            ops: vec![Op::Literal(3), Op::Hash(id)],
            raw_len: 3,
            compressed: false,
            blob: Bytes::from_static(b"abc"),
        },
    ];
    for f in &frames {
        s.write_all(&f.encode()).expect("send");
    }
    // The receiver accepts the hello, then asks its sender for the page.
    match read_frame(&mut s) {
        Some(Frame::Ack { ok: true, .. }) => {}
        other => panic!("expected the hello accepted, got {other:?}"),
    }
    match read_frame(&mut s) {
        Some(Frame::Pull(ids)) => assert_eq!(ids, vec![id]),
        other => panic!("expected a pull, got {other:?}"),
    }
    let page = answer.map(Bytes::from);
    s.write_all(&Frame::Pulled(vec![(id, page)]).encode())
        .expect("send");
    let (ok, err) = wait_with_stderr(child);
    let written = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    (ok, err, written)
}

#[test]
fn unknown_content_is_never_zero_filled() {
    let (ok, err, written) = receiver_facing(None);
    assert!(!ok, "receiver must fail");
    assert!(err.contains("refusing to guess"), "{err}");
    // Nothing of the batch reached QEMU, in particular no made-up page.
    assert!(written < PAGE_SIZE as u64, "{written} bytes written");
}

#[test]
fn wrong_bytes_for_an_id_are_rejected() {
    let (ok, err, written) = receiver_facing(Some(vec![0u8; PAGE_SIZE]));
    assert!(!ok, "receiver must fail");
    assert!(err.contains("do not hash to its id"), "{err}");
    assert!(written < PAGE_SIZE as u64, "{written} bytes written");
}

/// Run a sender on `input` to a receiver; returns (sender report, output).
fn migrate_file(
    dir: &Path,
    input: &Path,
    site: Option<&Server>,
    send_extra: &[&str],
    recv_extra: &[&str],
) -> (serde_json::Value, Vec<u8>) {
    let out = dir.join("out.qevm");
    let mut recv_args: Vec<String> = recv_extra
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    let mut site_args = Vec::new();
    if let Some(s) = site {
        site_args = vec![
            "--site".to_string(),
            s.endpoint.clone(),
            "--access-key".to_string(),
            s.access_key.clone(),
            "--secret-key".to_string(),
            s.secret_key.clone(),
        ];
    }
    recv_args.extend(site_args.iter().cloned());
    let recv_refs: Vec<&str> = recv_args.iter().map(std::string::String::as_str).collect();
    let (recv, listen) = spawn_receiver(&out, &recv_refs);
    let report = dir.join("send.json");
    let send = Command::new(strato_bin())
        .args(["migrate", "send", "--insecure", "--to", &listen, "--report"])
        .arg(&report)
        .args(&site_args)
        .args(send_extra)
        .stdin(std::fs::File::open(input).expect("input"))
        .output()
        .expect("running the sender");
    let (ok, err) = wait_with_stderr(recv);
    assert!(
        send.status.success(),
        "sender: {}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(ok, "receiver: {err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    (report, std::fs::read(&out).expect("output"))
}

/// Another sender of the group claimed every page and died before storing
/// any: the receiver waits briefly, then pulls them from its own sender.
#[test]
fn claimed_pages_of_a_dead_sender_are_pulled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = capture(dir.path());
    let input = dir.path().join("capture.qevm");
    let site = Server::start("redb");
    let (tokens, _) = tokenize(&stream);
    let ids: Vec<ChunkId> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Page(p) => Some(ChunkId::of(p)),
            Token::Literal(_) => None,
        })
        .collect();
    assert!(ids.len() > 100, "capture has {} pages", ids.len());
    // The dead sender's claims.
    let client = strato::chunk_api::ChunkClient::new(
        &site.endpoint,
        strato::chunk_api::Keys {
            access_key: site.access_key.clone(),
            secret_key: site.secret_key.clone(),
        },
        "us-east-1",
    )
    .expect("client");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let won = rt.block_on(client.claim("g1", &ids)).expect("claim");
    assert!(!won.is_empty());

    let (report, out) = migrate_file(
        dir.path(),
        &input,
        Some(&site),
        // A loaded machine's slow answer must not turn by-id pages literal.
        &[
            "--group",
            "g1",
            "--vm",
            "late",
            "--switchover-grace-ms",
            "30000",
        ],
        &["--wait-ms", "200"],
    );
    assert!(out == stream, "rebuilt stream differs from the capture");
    let pages = &report["pages"];
    assert!(pages["group"].as_u64().unwrap() > 0, "{report}");
    let pulled = pages["pulled"].as_u64().unwrap();
    let group = pages["group"].as_u64().unwrap();
    let repeat = pages["repeat"].as_u64().unwrap();
    assert!(pulled >= group && pulled <= group + repeat, "{report}");
    assert_eq!(pages["sent"], 0, "{report}");
}

/// `migrate recv --keep BUCKET/KEY` commits the pages it stored at the
/// site as an object: a GC without grace leaves them all, and the next
/// migration of the same guest sends none of them again.
#[test]
fn kept_pages_survive_gc_and_serve_the_next_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = capture(dir.path());
    let input = dir.path().join("capture.qevm");
    let st = Strato::new("redb");
    st.ok(&["mb", "migrations"]);
    let mut site = Server::start_with(st, &[]);

    // Bad --keep values stop the receiver before it listens.
    for (args, why) in [
        (vec!["--keep", "no-key"], "BUCKET/KEY"),
        (vec!["--keep", "migrations/vm1"], "--site"),
    ] {
        let out = Command::new(strato_bin())
            .args(["migrate", "recv", "--insecure", "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("receiver");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }

    let recv_report = dir.path().join("recv.json");
    let (first, out) = migrate_file(
        dir.path(),
        &input,
        Some(&site),
        &["--vm", "vm1"],
        &[
            "--keep",
            "migrations/vm1",
            "--report",
            recv_report.to_str().unwrap(),
        ],
    );
    assert!(out == stream, "rebuilt stream differs from the capture");
    let recv = read_report(&recv_report);
    let kept = &recv["kept"];
    assert_eq!(kept["error"], serde_json::Value::Null, "{recv}");
    let kept_pages = kept["pages"].as_u64().unwrap();
    let sent = first["pages"]["sent"].as_u64().unwrap();
    assert!(kept_pages > 100, "{recv}");
    assert!(kept_pages <= sent, "kept {kept_pages} of {sent} sent pages");

    // GC with no grace period: nothing at the site is garbage.
    site.child.kill().expect("stopping the site");
    site.child.wait().expect("site exit");
    let st = std::mem::replace(&mut site.strato, Strato::new("redb"));
    let gc = st.json(&["gc", "--grace", "0"]);
    assert_eq!(gc["reclaimed_chunks"], 0, "{gc}");
    let site = Server::start_with(st, &[]);

    let (second, out) = migrate_file(
        dir.path(),
        &input,
        Some(&site),
        // A loaded machine's slow answer must not turn by-id pages literal.
        &["--vm", "vm1", "--switchover-grace-ms", "30000"],
        &[],
    );
    assert!(out == stream, "rebuilt stream differs from the capture");
    let pages = &second["pages"];
    assert_eq!(pages["sent"], 0, "every page is at the site now: {second}");
    assert!(pages["site"].as_u64().unwrap() >= kept_pages, "{second}");
}

/// Input that is not a migration stream at all goes through unchanged.
#[test]
fn stream_not_understood_is_passed_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    let data = write_random(&input, 3 << 20, 11);
    let (report, out) = migrate_file(dir.path(), &input, None, &[], &[]);
    assert!(out == data, "pass-through changed the bytes");
    assert_eq!(report["passthrough_from"], 0, "{report}");
    assert_eq!(report["pages"]["sent"], 0);
    assert_eq!(report["verified"], true);
}

/// A VM name of 300 bytes, none of them ASCII, reaches the receiver whole
/// (protocol 2 cut names at 255 bytes, mid-character, and the receiver
/// then refused the hello as not UTF-8).
#[test]
fn long_non_ascii_vm_name_crosses_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("random.bin");
    let data = write_random(&input, 1 << 20, 5);
    let vm = "é".repeat(150);
    assert_eq!(vm.len(), 300);
    let recv_report = dir.path().join("recv.json");
    let recv_report_arg = recv_report.to_str().expect("utf-8 path");
    let (report, out) = migrate_file(
        dir.path(),
        &input,
        None,
        &["--vm", &vm],
        &["--report", recv_report_arg],
    );
    assert!(out == data, "the stream changed");
    assert_eq!(report["vm"], vm.as_str());
    assert_eq!(read_report(&recv_report)["vm"], vm.as_str());
}

/// A capture round-trips byte for byte (no site: within-VM dedup + zstd),
/// and also without compression or deduplication.
#[test]
fn capture_rebuilds_byte_identically_in_every_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = capture(dir.path());
    let input = dir.path().join("capture.qevm");
    for extra in [
        &[][..],
        &["--zstd", "0"][..],
        &["--no-dedup", "--zstd", "0"][..],
    ] {
        let (report, out) = migrate_file(dir.path(), &input, None, extra, &[]);
        assert!(out == stream, "mode {extra:?}: rebuilt stream differs");
        assert_eq!(report["stream_bytes"], stream.len() as u64);
        assert!(report["pages"]["sent"].as_u64().unwrap() > 0);
    }
}

/// The WAN connection drops mid-migration: QEMU's migration fails, the
/// source guest keeps running with its memory intact.
#[test]
fn wan_drop_fails_migration_and_source_keeps_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = VmSpec::new("drop", 9);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    let data_md5 = src.md5("/tmp/data");
    let listen = format!("127.0.0.1:{}", free_port());
    let recv_report = dir.path().join("recv.json");
    let send_report = dir.path().join("send.json");
    let _dst = Qemu::start(
        &spec,
        &dir.path().join("dst"),
        Some(&recv_uri(&listen, None, &recv_report, "")),
    );
    // Pages of /tmp/data are random: 1 MiB into it the relay cuts.
    let relay = cutting_relay(listen, 1 << 20);
    src.start_migration(&send_uri(&relay, None, "drop", &send_report, "--zstd 0"));
    let info = wait_finished(&mut src);
    assert_eq!(info.status, "failed", "{info:?}");
    assert_eq!(src.status(), "running");
    assert_eq!(src.md5("/tmp/data"), data_md5);
    let log = agent_log(&send_report);
    assert!(log.contains("error"), "sender log: {log}");
    assert!(
        !send_report.exists(),
        "a failed sender wrote a success report"
    );
}

/// Poll query-migrate (bounded) until the migration ends, whatever the end.
fn wait_finished(vm: &mut Qemu) -> strato::qemu::qmp::MigrationInfo {
    let deadline = Instant::now() + MIGRATE_TIMEOUT;
    loop {
        let info = vm.query_migrate();
        if info.is_finished() {
            return info;
        }
        assert!(Instant::now() < deadline, "migration did not end: {info:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The site stops answering the sender right after QEMU stops the guest
/// (a relay in front of it goes quiet, connections open): the sender asks
/// it nothing more, gives up on answers still out within its grace, and
/// sends what it cannot decide by id literally. The migration completes,
/// verified, and the guest's pause stays within QEMU's downtime limit plus
/// a bounded margin (the site client's own timeout is 60 s).
#[test]
fn site_silent_after_stop_still_switches_over_quickly() {
    const DOWNTIME_LIMIT_MS: u64 = 300;
    // Grace for late answers (at most 200 ms) plus a loaded 2-core
    // machine running debug builds and two TCG guests.
    const MARGIN_MS: f64 = 4000.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let site = Server::start("redb");
    let relay = StallingRelay::new(site.host.clone(), Duration::from_secs(600));
    let spec = VmSpec::new("stall", 21);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    let data_md5 = src.md5("/tmp/data");
    src.qmp(
        "migrate-set-parameters",
        Some(serde_json::json!({ "downtime-limit": DOWNTIME_LIMIT_MS })),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let recv_report = dir.path().join("recv.json");
    let send_report = dir.path().join("send.json");
    let mut dst = Qemu::start(
        &spec,
        &dir.path().join("dst"),
        Some(&recv_uri(&listen, Some(&site), &recv_report, "")),
    );
    // The sender reaches the site through the relay, the receiver directly.
    let sender_site = format!(
        "--site http://{} --access-key {} --secret-key {}",
        relay.addr, site.access_key, site.secret_key
    );
    src.start_migration(&send_uri_flags(
        &listen,
        &sender_site,
        "stall",
        &send_report,
        "--group stallgroup",
    ));
    let stop = {
        let (rt, qmp) = src.qmp_client();
        rt.block_on(qmp.wait_event("STOP", MIGRATE_TIMEOUT))
            .expect("STOP event")
    };
    relay.stall();
    let info = wait_finished(&mut src);
    assert_eq!(
        info.status,
        "completed",
        "{info:?}\nsender log:\n{}\nreceiver log:\n{}",
        agent_log(&send_report),
        agent_log(&recv_report)
    );
    dst.wait_status("running", Duration::from_secs(120));
    let resume = {
        let (rt, qmp) = dst.qmp_client();
        rt.block_on(qmp.wait_event("RESUME", Duration::from_secs(30)))
            .expect("RESUME event")
    };
    assert_eq!(dst.md5("/tmp/data"), data_md5, "guest data after migration");
    let paused_ms = (event_secs(&resume) - event_secs(&stop)) * 1000.0;

    let sent = read_report(&send_report);
    let recv = read_report(&recv_report);
    eprintln!(
        "paused {paused_ms:.0} ms, QEMU downtime {:?} ms; {} bytes to the silent site after the stop\nsender {sent}\nreceiver {recv}",
        info.downtime,
        relay.bytes_after_stall()
    );
    assert_eq!(sent["verified"], true);
    assert_eq!(recv["verified"], true);
    // The site answered before the stop: pages went by id then.
    assert!(sent["wan"]["queries"].as_u64().unwrap() > 0, "{sent}");
    let sw = &sent["switchover"];
    assert!(sw.is_object(), "no switchover in the report: {sent}");
    // Whatever reached the site after the stall went unanswered.
    assert!(
        relay.bytes_after_stall() == 0 || sw["lookups_given_up"].as_u64().unwrap() > 0,
        "requests went to the silent site but no answer was given up: {sw}"
    );
    let to_last = sw["stop_to_last_byte_ms"].as_f64().unwrap();
    assert!(
        sw["stream_bytes"].as_u64().unwrap() > 0 && sw["wan_bytes"].as_u64().unwrap() > 0,
        "{sw}"
    );
    assert!(
        to_last <= DOWNTIME_LIMIT_MS as f64 + MARGIN_MS,
        "sender's last byte {to_last:.0} ms after the stop: {sw}"
    );
    assert!(
        paused_ms <= DOWNTIME_LIMIT_MS as f64 + MARGIN_MS,
        "guest paused {paused_ms:.0} ms with the site silent after the stop: {sw}"
    );
}

/// A QMP event's timestamp, in seconds.
fn event_secs(ev: &serde_json::Value) -> f64 {
    let t = &ev["timestamp"];
    t["seconds"].as_f64().expect("event seconds")
        + t["microseconds"].as_f64().expect("event microseconds") / 1e6
}
