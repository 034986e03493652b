//! The chain across network namespaces: a repository and three nodes, each
//! in a namespace of its own, joined by veth pairs to a bridge that lives in
//! a further namespace. Everything this test creates is named after its PID
//! and removed by a guard, on success or failure. Needs root and iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod chain_util;
mod common;

use std::process::Command;
use std::time::Duration;

use chain_util::lan::Lan;
use chain_util::{dir_bytes, propagate, run_bounded, Agent, Kind};
use common::*;

/// The hosts' LAN and the processes started in it; all removed on drop,
/// by PID and by namespace name.
struct Topology {
    lan: Lan,
    agents: Vec<Agent>,
}

impl Topology {
    /// `hosts` namespaces with 10.77.0.(i+1)/24, bridged. Names start with
    /// `stc<PID><tag>`: unique per test process and per test.
    fn new(tag: &str, hosts: usize) -> Topology {
        Topology {
            lan: Lan::new("stc", tag, hosts, false),
            agents: Vec::new(),
        }
    }

    fn host(&self, i: usize) -> String {
        self.lan.host(i)
    }

    fn addr(&self, i: usize) -> String {
        self.lan.addr(i)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first; the namespaces go when `lan` drops after this.
        for a in &mut self.agents {
            a.kill();
        }
    }
}

fn netns_list() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn chain_across_namespaces() {
    require_tool("ip");
    let prefix = format!("stc{}a", std::process::id());
    {
        let mut topo = Topology::new("a", 4);
        let repo = Strato::new("redb");
        repo.ok(&["mb", "bkt"]);
        let mut data = random_bytes(24 << 20, 3);
        data[4 << 20..8 << 20].fill(0);
        let src = repo.dir.path().join("img");
        std::fs::write(&src, &data).unwrap();
        repo.put(&src, "bkt/vm/disk.img", "block");

        let tmp = tempfile::tempdir().unwrap();
        let kinds = [Kind::Store, Kind::Files, Kind::Store];
        for (i, kind) in kinds.iter().enumerate() {
            let ns = topo.host(i + 1);
            let listen = format!("{}:7400", topo.addr(i + 1));
            let dir = tmp.path().join(format!("node{i}"));
            let agent = Agent::start(&["ip", "netns", "exec", &ns], &listen, *kind, &dir);
            topo.agents.push(agent);
        }
        let nodes: Vec<String> = topo.agents.iter().map(|a| a.addr.clone()).collect();
        assert_eq!(nodes[0], "10.77.0.2:7400");

        // From the repository's namespace, nodes 1..3 are only reachable
        // over the veths and the bridge.
        let repo_ns = topo.host(0);
        let (ok, report, stderr) = propagate(
            &["ip", "netns", "exec", &repo_ns],
            &repo.data_dir(),
            "bkt/vm/disk.img",
            &nodes,
            &[],
        );
        assert!(ok, "{stderr}\n{report}");
        for n in report["nodes"].as_array().unwrap() {
            assert_eq!(n["ok"], true, "{report}");
            assert!(n["bytes_received"].as_u64().unwrap() > 0, "{report}");
        }
        let want = md5_hex(&data);
        for a in &mut topo.agents {
            let img = a.image("bkt/vm/disk.img", tmp.path());
            assert_eq!(md5_file(&img), want, "{} ({:?})", a.addr, a.kind);
        }
        assert!(netns_list().contains(&prefix));
    }
    let left = netns_list();
    assert!(!left.contains(&prefix), "namespaces left behind: {left}");
}

#[test]
fn node_whose_link_goes_down_is_bypassed() {
    require_tool("ip");
    let tc = require_tool("tc");
    let prefix = format!("stc{}b", std::process::id());
    let mut topo = Topology::new("b", 4);
    // Slow links (80 Mbit/s each way) so the transfer is still under way
    // when the middle node's link goes down.
    for i in 0..4 {
        let ns = topo.host(i);
        let mut cmd = Command::new(require_tool("ip"));
        cmd.args(["netns", "exec", &ns])
            .arg(&tc)
            .args([
                "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "80mbit",
            ])
            .args(["burst", "128kb", "latency", "50ms"]);
        let out = run_bounded(cmd, Duration::from_secs(20));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let repo = Strato::new("redb");
    repo.ok(&["mb", "bkt"]);
    let data = random_bytes(32 << 20, 5);
    let src = repo.dir.path().join("img");
    std::fs::write(&src, &data).unwrap();
    repo.put(&src, "bkt/disk.img", "block");

    let tmp = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let ns = topo.host(i + 1);
        let listen = format!("{}:7400", topo.addr(i + 1));
        let dir = tmp.path().join(format!("node{i}"));
        let agent = Agent::start(&["ip", "netns", "exec", &ns], &listen, Kind::Store, &dir);
        topo.agents.push(agent);
    }
    let nodes: Vec<String> = topo.agents.iter().map(|a| a.addr.clone()).collect();
    let middle_dir = topo.agents[1].dir.clone();
    let base = dir_bytes(&middle_dir);
    let middle_ns = topo.host(2);
    let cutter = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if dir_bytes(&middle_dir) > base + (4 << 20) {
                let mut cmd = Command::new("ip");
                cmd.args(["-n", &middle_ns, "link", "set", "eth0", "down"]);
                return run_bounded(cmd, Duration::from_secs(20)).status.success();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let repo_ns = topo.host(0);
    let (ok, report, stderr) = propagate(
        &["ip", "netns", "exec", &repo_ns],
        &repo.data_dir(),
        "bkt/disk.img",
        &nodes,
        &["--io-timeout", "3", "--connect-timeout", "2"],
    );
    assert!(
        cutter.join().unwrap(),
        "the middle node never received data"
    );
    assert!(!ok, "{report}");
    assert!(stderr.contains(&nodes[1]), "{stderr}");
    let r = report["nodes"].as_array().unwrap();
    assert_eq!(r[0]["ok"], true, "{report}");
    assert_eq!(r[1]["ok"], false, "{report}");
    assert_eq!(r[2]["ok"], true, "{report}");
    let want = md5_hex(&data);
    for i in [0, 2] {
        let img = topo.agents[i].image("bkt/disk.img", tmp.path());
        assert_eq!(md5_file(&img), want, "node {i}");
    }
    drop(topo);
    let left = netns_list();
    assert!(!left.contains(&prefix), "namespaces left behind: {left}");
}
