//! `strato propagate s3://BUCKET/KEY --endpoint URL`: the image comes from a
//! running repository over the chunk API; and a node that missed a
//! propagation catches up with `strato pull` into the same store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod chain_util;
mod common;

use std::process::Command;

use chain_util::{propagate, Agent, Kind};
use common::*;

#[test]
fn propagate_from_a_repository_endpoint_and_catch_up_by_pull() {
    let st = Strato::new("redb");
    st.ok(&["mb", "imgs"]);
    let mut data = random_bytes(12 << 20, 21);
    data[2 << 20..5 << 20].fill(0);
    let src = st.dir.path().join("img");
    std::fs::write(&src, &data).unwrap();
    st.put(&src, "imgs/vm/base.img", "block");
    let server = Server::start_with(st, &[]);

    let tmp = tempfile::tempdir().unwrap();
    let mut agents: Vec<Agent> = (0..2)
        .map(|i| Agent::local(Kind::Store, &tmp.path().join(format!("node{i}"))))
        .collect();
    let late = tmp.path().join("late-node");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let nodes = vec![agents[0].addr.clone(), dead.clone(), agents[1].addr.clone()];
    let keys = [
        "--endpoint",
        &server.endpoint,
        "--access-key",
        &server.access_key,
        "--secret-key",
        &server.secret_key,
    ];
    let empty = tmp.path().join("no-local-store");
    let (ok, report, stderr) = propagate(&[], &empty, "s3://imgs/vm/base.img", &nodes, &keys);
    assert!(!ok, "one node was down: {report}");
    assert!(stderr.contains(&dead), "{stderr}");
    assert_eq!(report["nodes"][0]["ok"], true, "{report}");
    assert_eq!(report["nodes"][1]["ok"], false, "{report}");
    assert_eq!(report["nodes"][2]["ok"], true, "{report}");
    let want = md5_hex(&data);
    for a in &mut agents {
        let img = a.image("imgs/vm/base.img", tmp.path());
        assert_eq!(md5_file(&img), want);
    }

    // The node that was down catches up by chunk pull into its store.
    let out = tmp.path().join("late.img");
    let o = Command::new(strato_bin())
        .args([
            "--json",
            "pull",
            "s3://imgs/vm/base.img",
            "--endpoint",
            &server.endpoint,
        ])
        .arg("--cache")
        .arg(&late)
        .arg("--out")
        .arg(&out)
        .env("STRATO_ACCESS_KEY", &server.access_key)
        .env("STRATO_SECRET_KEY", &server.secret_key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(md5_file(&out), want);
}
