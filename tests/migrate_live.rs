//! Live migration of real TCG guests through the strato agents on QEMU's
//! `exec:` hook, with the destination site's `strato serve` as Shrinker's
//! indexing and coordination service. Data inside the guest is checked
//! (md5 in the guest) before and after.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
mod migrate_util;
mod qemu_util;

use std::time::Duration;

use common::*;
use migrate_util::*;
use qemu_util::*;

/// One guest migrates through the agents and keeps its memory; a second
/// guest with the same data then finds its pages at the site (stored there
/// by the first migration) and sends them by id. The first link is plain
/// TCP (`--insecure`), the second mutual TLS.
#[test]
fn guest_migrates_through_agents_and_seeds_the_site() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = Server::start("redb");

    let tls = tls_flags(&dir.path().join("ca"), "127.0.0.1");
    let mut first_pages = 0;
    for (round, name) in ["first", "second"].iter().enumerate() {
        let link = if round == 0 { "" } else { tls.as_str() };
        let vdir = dir.path().join(name);
        let spec = VmSpec::new(name, 7);
        let mut src = Qemu::boot(&spec, &vdir.join("src"));
        let data_md5 = src.md5("/tmp/data");
        src.run("echo written-before-migration > /tmp/marker");

        let listen = format!("127.0.0.1:{}", free_port());
        let recv_report = vdir.join("recv.json");
        let send_report = vdir.join("send.json");
        std::fs::create_dir_all(&vdir).expect("dir");
        let mut dst = Qemu::start(
            &spec,
            &vdir.join("dst"),
            Some(&recv_uri(&listen, Some(&site), &recv_report, link)),
        );
        let info = src.migrate(&send_uri(&listen, Some(&site), name, &send_report, link));
        assert_eq!(info.status, "completed", "{}", agent_log(&send_report));
        dst.wait_status("running", Duration::from_secs(120));
        assert_eq!(src.status(), "postmigrate");
        assert_eq!(dst.md5("/tmp/data"), data_md5, "guest data after migration");
        assert_eq!(
            dst.run("cat /tmp/marker").trim(),
            "written-before-migration"
        );

        let sent = read_report(&send_report);
        let recv = read_report(&recv_report);
        eprintln!("{name}: sender {sent}\nreceiver {recv}");
        assert_eq!(sent["verified"], true);
        assert_eq!(recv["verified"], true);
        assert_eq!(sent["stream_bytes"], recv["stream_bytes"]);
        let pages = &sent["pages"];
        // /tmp/data alone is 8 MiB = 2048 distinct pages.
        let by_id = pages["site"].as_u64().unwrap() + pages["repeat"].as_u64().unwrap();
        if round == 0 {
            first_pages = pages["sent"].as_u64().unwrap();
            assert!(first_pages >= 2048, "first guest sent {first_pages} pages");
            assert!(recv["pages_stored"].as_u64().unwrap() >= 2048, "{recv}");
            assert!(
                sent["wan"]["total"].as_u64().unwrap() < sent["stream_bytes"].as_u64().unwrap(),
                "zstd and zero pages shrink the stream"
            );
        } else {
            // The site holds what the first migration stored.
            assert!(pages["site"].as_u64().unwrap() >= 2048, "{pages}");
            assert!(
                pages["sent"].as_u64().unwrap() * 2 < first_pages,
                "second guest still sent {} pages (first {first_pages})",
                pages["sent"]
            );
            assert!(recv["pages_site"].as_u64().unwrap() >= 2048, "{recv}");
            assert!(by_id >= 2048);
        }
        dst.run("echo after > /tmp/after && sync");
        assert_eq!(dst.run("cat /tmp/after").trim(), "after");
    }
}

/// Two guests with the same data migrate at once as one group: each page
/// crosses once, claimed by the first sender; the other sends its id.
#[test]
fn two_guests_migrate_as_one_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = Server::start("redb");
    let names = ["g-a", "g-b"];
    let mut vms = Vec::new();
    for name in names {
        let vdir = dir.path().join(name);
        let spec = VmSpec::new(name, 21);
        let mut src = Qemu::boot(&spec, &vdir.join("src"));
        let md5 = src.md5("/tmp/data");
        let listen = format!("127.0.0.1:{}", free_port());
        let dst = Qemu::start(
            &spec,
            &vdir.join("dst"),
            Some(&recv_uri(&listen, Some(&site), &vdir.join("recv.json"), "")),
        );
        vms.push((vdir, src, dst, md5, listen));
    }
    for (vdir, src, _, _, listen) in &mut vms {
        let name = vdir.file_name().unwrap().to_string_lossy().to_string();
        src.start_migration(&send_uri(
            listen,
            Some(&site),
            &name,
            &vdir.join("send.json"),
            "--group cluster1",
        ));
    }
    let mut reports = Vec::new();
    for (vdir, src, dst, md5, _) in &mut vms {
        let info = src.wait_migration(MIGRATE_TIMEOUT);
        assert_eq!(
            info.status,
            "completed",
            "{}",
            agent_log(&vdir.join("send.json"))
        );
        dst.wait_status("running", Duration::from_secs(120));
        assert_eq!(dst.md5("/tmp/data"), *md5);
        let r = read_report(&vdir.join("send.json"));
        assert_eq!(r["verified"], true);
        assert_eq!(r["group"], "cluster1");
        reports.push((vdir.join("send.json"), r, info.downtime.unwrap_or(0)));
    }
    let group_pages: u64 = reports
        .iter()
        .map(|(_, r, _)| r["pages"]["group"].as_u64().unwrap())
        .sum();
    let sent: u64 = reports
        .iter()
        .map(|(_, r, _)| r["pages"]["sent"].as_u64().unwrap())
        .sum();
    // The 2048 pages of /tmp/data are common: each crossed once.
    assert!(
        group_pages >= 2048,
        "only {group_pages} pages by group claim"
    );
    assert!(sent >= 2048, "sent {sent}");

    // The group report adds the VMs up.
    let strato = Strato::new("redb");
    let mut args = vec!["migrate".to_string(), "report".into()];
    for (i, (path, _, downtime)) in reports.iter().enumerate() {
        args.push(path.display().to_string());
        args.push("--downtime".into());
        args.push(format!("{}={downtime}", names[i]));
    }
    let refs: Vec<&str> = args.iter().map(std::string::String::as_str).collect();
    let g = strato.json(&refs);
    assert_eq!(g["vms"].as_array().unwrap().len(), 2);
    assert_eq!(g["pages"]["group"], group_pages);
    assert_eq!(g["all_verified"], true);
    assert!(g["max_downtime_ms"].is_u64());
}
