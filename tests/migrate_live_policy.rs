//! The live migration agents with CloudNet's optimisations: the sub-page
//! redundancy cache and page deltas, on pages that cross the WAN in full.
//!
//! - Every combination of {cache} x {deltas} x {zstd} rebuilds a real
//!   multi-round QEMU migration stream byte for byte through the real
//!   binaries (`migrate send` -> TCP -> `migrate recv`).
//! - A real TCG guest migrates QEMU -> agents -> QEMU with everything on
//!   while it dirties memory; its data is unchanged (md5 in the guest).
//! - Faults: after a dropped connection a retried migration (new agents)
//!   starts from fresh codec state and rebuilds the stream; codec frames
//!   naming state the receiver does not hold are refused, never decoded;
//!   an agent of another protocol version is refused with a clear message.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod migrate_util;
mod qemu_util;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use migrate_util::*;
use qemu_util::*;
use strato::migrate::codec::rcache::{CodecConfig, PageEncoder};
use strato::migrate::memory::sender::default_codec;
use strato::migrate::memory::wire::{Frame, Op, PROTOCOL};
use strato::qemu::stream::{Token, Tokenizer, PAGE_SIZE};

/// Guest shell loop that keeps changing a few bytes in many pages (a page
/// counter written across a 8 MiB file) and rewrites a hot 256 KiB region:
/// QEMU resends those pages in every round, slightly changed.
const DIRTIER: &str = "(i=0; while true; do i=$((i+1)); echo $i | dd of=/tmp/data bs=16 seek=$(( (i % 2048) * 256 )) conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 & true";

/// A real multi-round migration stream: a guest dirtying memory, migrated
/// to a file with a low max-bandwidth so QEMU needs several rounds.
fn multi_round_capture(dir: &Path) -> Vec<u8> {
    let mut spec = VmSpec::new("capture", 21);
    spec.mem_mib = 128;
    spec.data_mib = 8;
    let mut vm = Qemu::boot(&spec, &dir.join("capture-vm"));
    vm.run(DIRTIER);
    vm.run("sleep 1");
    vm.qmp(
        "migrate-set-parameters",
        Some(serde_json::json!({"max-bandwidth": 24_000_000u64, "downtime-limit": 300})),
    );
    let file = dir.join("capture.qevm");
    let info = vm.migrate(&format!("exec:cat > {}", file.display()));
    assert_eq!(info.status, "completed", "{info:?}");
    std::fs::read(&file).expect("capture")
}

/// How many pages of the stream are resends of a guest page sent before.
fn resent_pages(stream: &[u8]) -> usize {
    let mut tok = Tokenizer::new();
    let mut tokens = Vec::new();
    tok.feed(stream, &mut tokens);
    tok.finish(&mut tokens);
    let pages = tokens
        .iter()
        .filter(|t| matches!(t, Token::Page(_)))
        .count();
    let keys = tok.take_page_keys();
    assert_eq!(keys.len(), pages);
    let mut seen = HashSet::new();
    keys.into_iter().filter(|k| !seen.insert(*k)).count()
}

/// `strato migrate recv` on a free port writing to `out`.
fn spawn_receiver(out: &Path) -> (std::process::Child, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(strato_bin())
        .args([
            "--json",
            "migrate",
            "recv",
            "--insecure",
            "--listen",
            &listen,
        ])
        .stdout(std::fs::File::create(out).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the receiver");
    (child, listen)
}

/// Sender on `input` to `to`; returns (success, stderr).
fn run_sender(input: &Path, to: &str, report: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(strato_bin())
        .args(["migrate", "send", "--insecure", "--to", to, "--report"])
        .arg(report)
        .args(extra)
        .stdin(std::fs::File::open(input).expect("input"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the sender");
    wait_with_stderr(out)
}

/// One migration of a file through both agents: (sender report, output).
fn migrate_file(dir: &Path, input: &Path, extra: &[&str]) -> (serde_json::Value, Vec<u8>) {
    let out = dir.join("out.qevm");
    let (recv, listen) = spawn_receiver(&out);
    let report = dir.join("send.json");
    let _ = std::fs::remove_file(&report);
    let (ok, err) = run_sender(input, &listen, &report, extra);
    let (rok, rerr) = wait_with_stderr(recv);
    assert!(ok, "sender {extra:?}: {err}");
    assert!(rok, "receiver {extra:?}: {rerr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    (report, std::fs::read(&out).expect("output"))
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Byte-identical reconstruction of a real multi-round stream with every
/// combination of cache, deltas and zstd; the optimisations save bytes.
#[test]
fn every_codec_combination_rebuilds_a_multi_round_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = multi_round_capture(dir.path());
    let input = dir.path().join("capture.qevm");
    let resent = resent_pages(&stream);
    eprintln!("capture: {} bytes, {resent} resent pages", stream.len());
    assert!(
        resent > 20,
        "not a multi-round stream: {resent} resent pages"
    );
    let mut wan = Vec::new();
    for cache in [false, true] {
        for deltas in [false, true] {
            for zstd in [false, true] {
                let blocks = if cache { "4" } else { "0" };
                let d = if deltas { "--deltas" } else { "--no-deltas" };
                let z = if zstd { "3" } else { "0" };
                let extra = ["--rcache-blocks", blocks, d, "--zstd", z];
                let (r, out) = migrate_file(dir.path(), &input, &extra);
                assert!(out == stream, "{extra:?}: rebuilt stream differs");
                assert_eq!(r["verified"], true, "{r}");
                assert_eq!(n(&r["stream_bytes"]), stream.len() as u64);
                let (saved_cache, saved_delta) = (n(&r["saved"]["cache"]), n(&r["saved"]["delta"]));
                let (pages_cache, pages_delta) = (n(&r["pages"]["cache"]), n(&r["pages"]["delta"]));
                eprintln!(
                    "{extra:?}: WAN {} bytes, saved by cache {saved_cache} ({pages_cache} pages), by deltas {saved_delta} ({pages_delta} pages)",
                    r["wan"]["total"]
                );
                if cache {
                    assert!(saved_cache > 0 && pages_cache > 0, "{extra:?}: {r}");
                } else {
                    assert_eq!(saved_cache + pages_cache, 0, "{extra:?}: {r}");
                }
                if deltas {
                    assert!(saved_delta > 0 && pages_delta > 0, "{extra:?}: {r}");
                } else {
                    assert_eq!(saved_delta + pages_delta, 0, "{extra:?}: {r}");
                }
                wan.push((extra.join(" "), n(&r["wan"]["total"])));
            }
        }
    }
    // Same zstd setting: the codec never costs more than it saves.
    let plain = wan[0].1;
    let all_uncompressed = wan[6].1;
    assert!(all_uncompressed < plain, "{wan:?}");
}

/// A real guest migrates through the agents (site-assisted dedup, cache,
/// deltas, zstd) while dirtying memory, and keeps its data.
#[test]
fn guest_migrates_live_with_cache_and_deltas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = Server::start("redb");
    let spec = VmSpec::new("codec", 31);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    src.run("cp /tmp/data /tmp/keep && sync");
    let keep_md5 = src.md5("/tmp/keep");
    src.run(DIRTIER);
    src.qmp(
        "migrate-set-parameters",
        Some(serde_json::json!({"max-bandwidth": 40_000_000u64})),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let recv_report = dir.path().join("recv.json");
    let send_report = dir.path().join("send.json");
    let mut dst = Qemu::start(
        &spec,
        &dir.path().join("dst"),
        Some(&recv_uri(&listen, Some(&site), &recv_report, "")),
    );
    let info = src.migrate(&send_uri(
        &listen,
        Some(&site),
        "codec",
        &send_report,
        "--rcache-blocks 4 --deltas --zstd 3",
    ));
    assert_eq!(info.status, "completed", "{}", agent_log(&send_report));
    dst.wait_status("running", Duration::from_secs(120));
    assert_eq!(src.status(), "postmigrate");
    assert_eq!(dst.md5("/tmp/keep"), keep_md5, "guest data after migration");
    // The dirtier migrated with the guest and still runs.
    let a = dst.run("stat -c %Y /tmp/data; sleep 2; stat -c %Y /tmp/data");
    let times: Vec<&str> = a.split_whitespace().collect();
    assert_eq!(times.len(), 2, "{a}");
    assert_ne!(times[0], times[1], "the guest's dirtier stopped: {a}");
    let sent = read_report(&send_report);
    let recv = read_report(&recv_report);
    eprintln!("sender {sent}\nreceiver {recv}");
    assert_eq!(sent["verified"], true);
    assert_eq!(recv["verified"], true);
    assert_eq!(sent["stream_bytes"], recv["stream_bytes"]);
    let saved = n(&sent["saved"]["cache"]) + n(&sent["saved"]["delta"]);
    assert!(saved > 0, "{sent}");
}

/// Deterministic stream with resent, slightly changed pages, so the codec
/// has deltas to make (QEMU 10's layout for `-M pc`, one RAM block, four
/// rounds as RAM sections, a device section passed through at the end).
fn synthetic_stream() -> Vec<u8> {
    const RAM: u32 = 2;
    let footer = |s: &mut Vec<u8>| {
        s.extend_from_slice(&0x10u64.to_be_bytes()); // EOS
        s.push(0x7e);
        s.extend_from_slice(&RAM.to_be_bytes());
    };
    let mut s = Vec::new();
    s.extend_from_slice(b"QEVM");
    s.extend_from_slice(&3u32.to_be_bytes());
    s.push(0x07);
    s.extend_from_slice(&4u32.to_be_bytes());
    s.extend_from_slice(b"pc-x");
    s.push(0x01); // START: RAM setup with the block list
    s.extend_from_slice(&RAM.to_be_bytes());
    s.push(3);
    s.extend_from_slice(b"ram");
    s.extend_from_slice(&0u32.to_be_bytes());
    s.extend_from_slice(&4u32.to_be_bytes());
    let pages = 512u64;
    let total = pages * PAGE_SIZE as u64;
    s.extend_from_slice(&(total | 0x04).to_be_bytes());
    s.push(6);
    s.extend_from_slice(b"pc.ram");
    s.extend_from_slice(&total.to_be_bytes());
    footer(&mut s);
    let mut mem: Vec<Vec<u8>> = (0..pages)
        .map(|p| {
            (0..PAGE_SIZE)
                .map(|i| ((p as usize * 7919 + i * 31) % 251) as u8)
                .collect()
        })
        .collect();
    for round in 0..4u64 {
        s.push(if round == 3 { 0x03 } else { 0x02 }); // PART, then END
        s.extend_from_slice(&RAM.to_be_bytes());
        let mut first = true;
        for p in 0..pages {
            if round > 0 && p % 3 != 0 {
                continue;
            }
            mem[p as usize][(round as usize * 97) % PAGE_SIZE] ^= 0x5a;
            let cont = if first { 0 } else { 0x20 };
            s.extend_from_slice(&((p * PAGE_SIZE as u64) | 0x08 | cont).to_be_bytes());
            if first {
                s.push(6);
                s.extend_from_slice(b"pc.ram");
                first = false;
            }
            s.extend_from_slice(&mem[p as usize]);
        }
        footer(&mut s);
    }
    // A device section: passed through.
    s.push(0x04);
    s.extend_from_slice(b"\0\0\0\x03\x03cpu\0\0\0\0\0\0\0\x01somestate");
    s.push(0x00);
    s
}

/// The WAN drops mid-stream: both agents fail (nothing half-decoded is
/// accepted); new agents then migrate the same stream from fresh codec
/// state, byte for byte.
#[test]
fn retry_after_a_drop_starts_fresh_and_rebuilds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = synthetic_stream();
    assert!(
        resent_pages(&stream) > 300,
        "synthetic stream resends pages"
    );
    let input = dir.path().join("in.qevm");
    std::fs::write(&input, &stream).expect("input");

    let out = dir.path().join("dropped.qevm");
    let (recv, listen) = spawn_receiver(&out);
    let relay = cutting_relay(listen, 600 << 10);
    let report = dir.path().join("dropped.json");
    let (ok, err) = run_sender(&input, &relay, &report, &["--zstd", "0"]);
    let (rok, rerr) = wait_with_stderr(recv);
    assert!(!ok, "sender must fail when the WAN drops");
    assert!(!rok, "receiver must fail when the WAN drops");
    assert!(err.contains("error") || err.contains("Error"), "{err}");
    assert!(
        rerr.contains("closed") || rerr.contains("connection"),
        "{rerr}"
    );
    assert!(!report.exists(), "a failed sender wrote a success report");
    let partial = std::fs::read(&out).expect("partial output");
    assert!(partial.len() < stream.len());
    assert!(
        stream.starts_with(&partial),
        "dropped receiver wrote wrong bytes"
    );

    let (r, rebuilt) = migrate_file(dir.path(), &input, &["--zstd", "0"]);
    assert!(rebuilt == stream, "retried migration differs");
    assert!(n(&r["saved"]["delta"]) > 0, "{r}");
}

/// A fake sender that speaks the protocol but names codec state the
/// receiver never built: the receiver refuses, and writes no page of it.
fn receiver_facing_codec(ops_frame: impl Fn(u32) -> (Vec<Op>, Vec<u8>)) -> (bool, String, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (child, listen) = spawn_receiver(&out);
    let mut s = connect(&listen);
    let generation = 77;
    let hello = Frame::Hello {
        protocol: PROTOCOL,
        vm: "fake".into(),
        group: None,
        generation,
        codec: Some(default_codec()),
    };
    s.write_all(&hello.encode()).expect("send");
    match read_frame(&mut s) {
        Some(Frame::Ack { ok: true, .. }) => {}
        other => panic!("expected the hello accepted, got {other:?}"),
    }
    let (ops, blob) = ops_frame(generation);
    let batch = Frame::Batch {
        ops,
        raw_len: blob.len() as u32,
        compressed: false,
        blob: Bytes::from(blob),
    };
    s.write_all(&batch.encode()).expect("send");
    let (ok, err) = wait_with_stderr(child);
    let written = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    (ok, err, written)
}

/// Real codec frames from an encoder whose earlier frames the receiver
/// never saw: the second copy of a page is all cache hits, a changed page
/// is a delta against a version the receiver does not hold.
fn orphan_frame(generation: u32, delta: bool) -> (Vec<Op>, Vec<u8>) {
    let cfg = CodecConfig {
        cbr: !delta,
        ..default_codec()
    };
    let mut enc = PageEncoder::new(cfg, generation).expect("encoder");
    let mut page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 199) as u8).collect();
    let mut f = Vec::new();
    enc.encode(1, &page, &mut f).expect("encode");
    let key = if delta {
        page[5] ^= 1;
        1
    } else {
        2
    };
    let o = enc.encode(key, &page, &mut f).expect("encode");
    assert_ne!(format!("{:?}", o.kind), "Raw");
    let mut blob = b"lit".to_vec();
    blob.extend_from_slice(&f);
    (
        vec![
            Op::Literal(3),
            Op::Coded {
                key,
                len: f.len() as u32,
            },
        ],
        blob,
    )
}

#[test]
fn frames_naming_unknown_codec_state_are_refused() {
    // Cache slots the receiver's (empty) cache does not have.
    let (ok, err, written) = receiver_facing_codec(|g| orphan_frame(g, false));
    assert!(!ok, "receiver must fail");
    assert!(err.contains("out of sync"), "{err}");
    assert!(written < PAGE_SIZE as u64, "{written} bytes written");
    // A delta against a page version the receiver never received.
    let (ok, err, written) = receiver_facing_codec(|g| orphan_frame(g, true));
    assert!(!ok, "receiver must fail");
    assert!(err.contains("out of sync"), "{err}");
    assert!(written < PAGE_SIZE as u64, "{written} bytes written");
    // A frame of another connection's generation.
    let (ok, err, written) = receiver_facing_codec(|g| {
        let (ops, mut blob) = orphan_frame(g, false);
        blob[3 + 1] ^= 0xff;
        (ops, blob)
    });
    assert!(!ok, "receiver must fail");
    assert!(err.contains("generation"), "{err}");
    assert!(written < PAGE_SIZE as u64, "{written} bytes written");
}

/// An agent of protocol 1 (before the codec) is refused with a message
/// naming both versions, and the receiver writes nothing.
#[test]
fn agent_of_another_protocol_is_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let (child, listen) = spawn_receiver(&out);
    let mut s = connect(&listen);
    // Protocol 1's hello: kind 1, length, be32 version, vm, group.
    let payload = b"\0\0\0\x01\x03old\x00";
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    s.write_all(&frame).expect("send");
    match read_frame(&mut s) {
        Some(Frame::Ack { ok: false, message }) => {
            assert!(message.contains("protocol 1"), "{message}");
            assert!(
                message.contains(&format!("receiver {PROTOCOL}")),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (ok, err) = wait_with_stderr(child);
    assert!(!ok);
    assert!(err.contains("protocol 1"), "{err}");
    assert_eq!(std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0), 0);
}
