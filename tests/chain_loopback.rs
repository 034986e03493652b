//! `strato chain-agent` / `strato propagate` on loopback: real agent
//! processes, a real repository store, results checked byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod chain_util;
mod common;

use std::time::{Duration, Instant};

use chain_util::{dir_bytes, propagate, Agent, Kind};
use common::*;

/// A repository with `bkt/img`: random data with a long zero run in the
/// middle (stored as a zero run, sent as verifiable zero pieces).
fn repository(size: usize) -> (Strato, Vec<u8>) {
    let repo = Strato::new("redb");
    repo.ok(&["mb", "bkt"]);
    let mut data = random_bytes(size, 7);
    let z = size / 3;
    data[z..z + size / 4].fill(0);
    let src = repo.dir.path().join("img");
    std::fs::write(&src, &data).unwrap();
    repo.put(&src, "bkt/dir/img.raw", "block");
    (repo, data)
}

fn check_report(r: &serde_json::Value, n: usize) {
    let nodes = r["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), n, "{r}");
    for node in nodes {
        assert_eq!(node["ok"], true, "{r}");
    }
}

fn propagate_and_compare(kinds: &[Kind]) {
    let (repo, data) = repository(24 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| Agent::local(*k, &tmp.path().join(format!("node{i}"))))
        .collect();
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.clone()).collect();
    let (ok, report, stderr) = propagate(&[], &repo.data_dir(), "bkt/dir/img.raw", &addrs, &[]);
    assert!(ok, "{stderr}\n{report}");
    check_report(&report, kinds.len());
    assert_eq!(report["object_size"], data.len() as u64);
    // The repository sends the object once, not once per node, and never
    // the zero run as a whole.
    let sent = report["bytes_sent"].as_u64().unwrap();
    assert!(sent < data.len() as u64, "{report}");
    let want = md5_hex(&data);
    for a in &mut agents {
        let img = a.image("bkt/dir/img.raw", tmp.path());
        assert_eq!(md5_file(&img), want, "node {} ({:?})", a.addr, a.kind);
    }
    // The store nodes' ETag is the MD5 of the body, as S3 clients expect.
    for a in agents.iter().filter(|a| a.kind == Kind::Store) {
        let o = std::process::Command::new(strato_bin())
            .arg("--data-dir")
            .arg(&a.dir)
            .args(["--json", "ls", "bkt"])
            .output()
            .unwrap();
        let ls = String::from_utf8_lossy(&o.stdout);
        assert!(ls.contains(&want), "{ls}");
    }
}

#[test]
fn three_store_nodes_get_identical_copies() {
    propagate_and_compare(&[Kind::Store, Kind::Store, Kind::Store]);
}

#[test]
fn three_file_nodes_get_identical_copies() {
    propagate_and_compare(&[Kind::Files, Kind::Files, Kind::Files]);
}

#[test]
fn mixed_chain_of_store_and_file_nodes() {
    propagate_and_compare(&[Kind::Store, Kind::Files, Kind::Store]);
}

#[test]
fn node_holding_v1_receives_only_changed_chunks_of_v2() {
    let (repo, v1) = repository(16 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent::local(Kind::Store, &tmp.path().join(format!("node{i}"))))
        .collect();
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.clone()).collect();
    let (ok, r1, stderr) = propagate(&[], &repo.data_dir(), "bkt/dir/img.raw", &addrs, &[]);
    assert!(ok, "{stderr}");
    check_report(&r1, 3);

    // v2: three 64 KiB regions rewritten (block-aligned, as a guest would).
    let mut v2 = v1.clone();
    let patch = random_bytes(3 << 16, 99);
    for (i, off) in [1usize << 20, 9 << 20, 15 << 20].iter().enumerate() {
        v2[*off..*off + (1 << 16)].copy_from_slice(&patch[i << 16..(i + 1) << 16]);
    }
    let src = repo.dir.path().join("img2");
    std::fs::write(&src, &v2).unwrap();
    repo.put(&src, "bkt/dir/img-v2.raw", "block");

    let (ok, r2, stderr) = propagate(&[], &repo.data_dir(), "bkt/dir/img-v2.raw", &addrs, &[]);
    assert!(ok, "{stderr}");
    check_report(&r2, 3);
    let size = v2.len() as u64;
    // Only the chunks covering the changed regions move: a small fraction
    // of the image, on every hop, and from the repository.
    for n in r2["nodes"].as_array().unwrap() {
        let got = n["bytes_received"].as_u64().unwrap();
        assert!(got >= 3 << 16, "{r2}");
        assert!(got < size / 8, "node received {got} of {size} bytes: {r2}");
    }
    assert!(r2["bytes_sent"].as_u64().unwrap() < size / 8, "{r2}");
    let want = md5_hex(&v2);
    for a in &mut agents {
        let img = a.image("bkt/dir/img-v2.raw", tmp.path());
        assert_eq!(md5_file(&img), want);
    }
}

#[test]
fn killed_middle_node_is_bypassed_and_reported() {
    let (repo, data) = repository(160 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| Agent::local(Kind::Store, &tmp.path().join(format!("node{i}"))))
        .collect();
    let addrs: Vec<String> = agents.iter().map(|a| a.addr.clone()).collect();
    let middle_dir = agents[1].dir.clone();
    let base = dir_bytes(&middle_dir);
    let middle_pid = agents[1].pid();

    // Kill the middle agent (SIGKILL, by PID) once it has stored some data
    // but well before the whole image is there.
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if dir_bytes(&middle_dir) > base + (8 << 20) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &middle_pid.to_string()])
                    .status();
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    });
    let (ok, report, stderr) = propagate(&[], &repo.data_dir(), "bkt/dir/img.raw", &addrs, &[]);
    assert!(
        killer.join().unwrap(),
        "the middle node never received data"
    );
    assert!(!ok, "propagate must fail when a node failed: {report}");
    assert!(
        stderr.contains(&addrs[1]),
        "the failed node is named: {stderr}"
    );
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(nodes[0]["ok"], true, "{report}");
    assert_eq!(nodes[1]["ok"], false, "{report}");
    assert_eq!(nodes[2]["ok"], true, "{report}");
    let want = md5_hex(&data);
    for i in [0, 2] {
        let img = agents[i].image("bkt/dir/img.raw", tmp.path());
        assert_eq!(md5_file(&img), want, "node {i}");
    }
    // The killed node never shows the object as complete.
    agents[1].kill();
    let o = std::process::Command::new(strato_bin())
        .arg("--data-dir")
        .arg(&agents[1].dir)
        .args(["ls", "bkt"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("img.raw"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn unreachable_node_is_reported_and_exit_is_nonzero() {
    let (repo, data) = repository(4 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Agent::local(Kind::Files, &tmp.path().join("node0"));
    // A port nobody listens on: bind, note, release.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let nodes = vec![dead.clone(), a.addr.clone()];
    let (ok, report, stderr) = propagate(&[], &repo.data_dir(), "bkt/dir/img.raw", &nodes, &[]);
    assert!(!ok);
    assert!(stderr.contains(&dead), "{stderr}");
    assert_eq!(report["nodes"][0]["ok"], false, "{report}");
    assert_eq!(report["nodes"][1]["ok"], true, "{report}");
    let img = a.image("bkt/dir/img.raw", tmp.path());
    assert_eq!(md5_file(&img), md5_hex(&data));
}

#[test]
fn agent_refuses_names_that_would_escape_its_out_dir() {
    let repo = Strato::new("redb");
    repo.ok(&["mb", "bkt"]);
    let src = repo.dir.path().join("f");
    std::fs::write(&src, b"hello").unwrap();
    // A key whose last component is ".." must not become a path.
    repo.ok(&["put", src.to_str().unwrap(), "bkt/x/.."]);
    let tmp = tempfile::tempdir().unwrap();
    let a = Agent::local(Kind::Files, &tmp.path().join("out"));
    let (ok, report, _) = propagate(
        &[],
        &repo.data_dir(),
        "bkt/x/..",
        std::slice::from_ref(&a.addr),
        &[],
    );
    assert!(!ok, "{report}");
    assert_eq!(report["nodes"][0]["ok"], false);
    assert!(!tmp.path().join("x").exists());
}
