//! Cloning a saved guest onto many hosts by the broadcast chain (Jump-Start
//! §3.1 with the propagation of issue 5): `strato vm save` stores the
//! guest's RAM as an object, `strato propagate` pipelines it through a
//! chain of node agents (each distinct chunk leaves the repository once),
//! and `strato vm load` starts one clone from each node's copy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod chain_util;
mod common;
mod qemu_util;

use std::time::Duration;

use chain_util::{propagate, Agent, Kind};
use common::*;
use qemu_util::*;

#[test]
fn three_clones_from_one_save_by_the_broadcast_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Strato::new("redb");
    repo.ok(&["mb", "vms"]);

    let spec = VmSpec::new("chained", 21);
    let mut src = Qemu::boot(&spec, &dir.path().join("src"));
    let data_md5 = src.md5("/tmp/data");
    src.run("echo before-save > /tmp/marker");
    let qmp = src.tool_qmp_path();
    let saved = repo.json(&["vm", "save", "--qmp", qmp.to_str().unwrap(), "vms/chained"]);
    eprintln!("save: {saved}");
    assert_eq!(
        src.status(),
        "postmigrate",
        "a save leaves the guest stopped"
    );
    drop(src);
    let nonzero_ram = saved["qemu"]["ram_bytes"].as_u64().expect("ram_bytes");

    // Three hosts, each a chain agent writing received images as files.
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| {
            let out = dir.path().join(format!("host{i}"));
            std::fs::create_dir_all(&out).expect("host dir");
            Agent::local(Kind::Files, &out)
        })
        .collect();
    let nodes: Vec<String> = agents.iter().map(|a| a.addr.clone()).collect();
    let (ok, report, stderr) = propagate(&[], &repo.data_dir(), "vms/chained", &nodes, &[]);
    assert!(ok, "propagate failed: {stderr}\n{report}");
    eprintln!("propagate: {report}");
    // The repository sends the image once, however long the chain (zero
    // pages never): each node receives from its predecessor what the
    // repository sent to the first.
    let sent = report["bytes_sent"]
        .as_u64()
        .unwrap_or_else(|| panic!("no bytes_sent in {report}"));
    assert!(
        sent <= nonzero_ram + (1 << 20),
        "the repository sent {sent} bytes for {nonzero_ram} bytes of non-zero RAM"
    );
    for n in report["nodes"].as_array().expect("nodes") {
        assert_eq!(n["ok"], true, "{n}");
        assert_eq!(n["bytes_received"].as_u64(), Some(sent), "{n}");
    }

    let mut clones = Vec::new();
    for (i, agent) in agents.iter_mut().enumerate() {
        let file = agent.image("vms/chained", dir.path());
        assert!(file.is_file(), "host {i} has no {}", file.display());
        let mut clone_spec = spec.clone();
        clone_spec.name = format!("chain-clone{i}");
        let mut vm = Qemu::start(
            &clone_spec,
            &dir.path().join(format!("vm{i}")),
            Some("defer"),
        );
        assert_eq!(vm.status(), "inmigrate");
        let loaded = repo.json(&[
            "vm",
            "load",
            "--qmp",
            vm.tool_qmp_path().to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        assert_eq!(loaded["vm_status"], "running", "{loaded}");
        vm.wait_status("running", Duration::from_secs(30));
        assert_eq!(vm.md5("/tmp/data"), data_md5, "clone {i}'s data");
        assert_eq!(vm.run("cat /tmp/marker").trim(), "before-save");
        clones.push(vm);
    }
    // Separate guests from here on.
    for (i, vm) in clones.iter_mut().enumerate() {
        vm.run(&format!("echo clone-{i} > /tmp/who"));
    }
    for (i, vm) in clones.iter_mut().enumerate() {
        assert_eq!(vm.run("cat /tmp/who").trim(), format!("clone-{i}"));
    }
}
