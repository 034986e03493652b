//! `strato overlay create` and `strato vm prepare`, checked with real
//! qemu-img / qemu-io; and QEMU's curl driver reading a presigned URL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn qemu_io(args: &[&str], image: &str) -> String {
    let out = Command::new(require_tool("qemu-io"))
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        "qemu-io {args:?} {image}: {text}"
    );
    text
}

/// 8 MiB: 4 MiB of 0xab, then 4 MiB of 0xcd.
fn patterned(path: &Path) -> Vec<u8> {
    let mut d = vec![0xabu8; 8 << 20];
    d[4 << 20..].fill(0xcd);
    std::fs::write(path, &d).unwrap();
    d
}

#[test]
fn overlay_over_raw_reads_through_and_keeps_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Strato::new("redb");
    let base = tmp.path().join("base.img");
    patterned(&base);
    let md5_before = md5_file(&base);
    let ov = tmp.path().join("vm.qcow2");
    let out = st.ok(&[
        "overlay",
        "create",
        "--backing",
        base.to_str().unwrap(),
        ov.to_str().unwrap(),
    ]);
    assert!(out.contains("created"), "{out}");
    let qemu_img = require_tool("qemu-img");
    let check = run_tool(Command::new(&qemu_img).arg("check").arg(&ov));
    assert!(check.contains("No errors"), "{check}");
    let info = run_tool(
        Command::new(&qemu_img)
            .args(["info", "--backing-chain"])
            .arg(&ov),
    );
    assert!(
        info.contains(&format!("backing file: {}", base.display())),
        "{info}"
    );
    assert!(info.contains("backing file format: raw"), "{info}");
    assert!(info.contains("virtual size: 8 MiB"), "{info}");

    let ovs = ov.to_str().unwrap();
    qemu_io(
        &["-c", "read -P 0xab 0 4M", "-c", "read -P 0xcd 4M 4M"],
        ovs,
    );
    qemu_io(&["-c", "write -P 0x5a 1M 64k"], ovs);
    qemu_io(
        &[
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0x5a 1M 64k",
            "-c",
            "read -P 0xab 1088k 64k",
        ],
        ovs,
    );
    assert_eq!(md5_file(&base), md5_before, "the backing file was written");
    let check = run_tool(Command::new(&qemu_img).arg("check").arg(&ov));
    assert!(check.contains("No errors"), "{check}");

    // Never replaces an existing file.
    let err = st.fails(&[
        "overlay",
        "create",
        "--backing",
        base.to_str().unwrap(),
        ovs,
    ]);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn overlay_over_qcow2_and_corrupt_backing() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Strato::new("redb");
    let raw = tmp.path().join("base.raw");
    patterned(&raw);
    let base = tmp.path().join("base.qcow2");
    run_tool(
        Command::new(require_tool("qemu-img"))
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&base),
    );
    let ov = tmp.path().join("vm.qcow2");
    st.ok(&[
        "overlay",
        "create",
        "--backing",
        base.to_str().unwrap(),
        ov.to_str().unwrap(),
    ]);
    let info = run_tool(Command::new(require_tool("qemu-img")).arg("info").arg(&ov));
    assert!(info.contains("backing file format: qcow2"), "{info}");
    qemu_io(
        &["-c", "read -P 0xab 0 4M", "-c", "read -P 0xcd 4M 4M"],
        ov.to_str().unwrap(),
    );

    // A qcow2 header with a broken cluster size is refused, with the reason.
    let mut bytes = std::fs::read(&base).unwrap();
    bytes[20..24].copy_from_slice(&99u32.to_be_bytes());
    let bad = tmp.path().join("bad.qcow2");
    std::fs::write(&bad, &bytes).unwrap();
    let o2 = tmp.path().join("vm2.qcow2");
    let err = st.fails(&[
        "overlay",
        "create",
        "--backing",
        bad.to_str().unwrap(),
        o2.to_str().unwrap(),
    ]);
    assert!(
        err.contains("not a valid qcow2 image") && err.contains("cluster_bits"),
        "{err}"
    );
    assert!(!o2.exists());
    // Asking for qcow2 over a raw file is refused too.
    let err = st.fails(&[
        "overlay",
        "create",
        "--backing",
        raw.to_str().unwrap(),
        "--backing-format",
        "qcow2",
        o2.to_str().unwrap(),
    ]);
    assert!(err.contains("no qcow2 magic"), "{err}");
    // A missing backing file is an error, not a panic.
    let err = st.fails(&[
        "overlay",
        "create",
        "--backing",
        "/nonexistent/x.img",
        o2.to_str().unwrap(),
    ]);
    assert!(err.contains("No such file"), "{err}");
}

fn server_with(path: &Path, key: &str) -> Server {
    let st = Strato::new("redb");
    st.ok(&["mb", "imgs"]);
    st.put(path, &format!("imgs/{key}"), "block");
    Server::start_with(st, &[])
}

#[test]
fn vm_prepare_pulls_once_and_makes_overlays() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.img");
    patterned(&src);
    let s = server_with(&src, "base.img");
    let dir = tmp.path().join("node");
    let out = Command::new(strato_bin())
        .args([
            "--json",
            "vm",
            "prepare",
            "--image",
            "s3://imgs/base.img",
            "--endpoint",
            &s.endpoint,
            "--count",
            "4",
            "--dir",
        ])
        .arg(&dir)
        .env("STRATO_ACCESS_KEY", &s.access_key)
        .env("STRATO_SECRET_KEY", &s.secret_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["overlays"].as_array().unwrap().len(), 4);
    assert!(r["overlay_ms_max"].as_f64().unwrap() < 100.0, "{r}");
    for i in 0..4 {
        let ov = dir.join(format!("vm-{i}.qcow2"));
        let check = run_tool(Command::new(require_tool("qemu-img")).arg("check").arg(&ov));
        assert!(check.contains("No errors"), "{check}");
        qemu_io(
            &["-c", "read -P 0xab 0 4M", "-c", "read -P 0xcd 4M 4M"],
            ov.to_str().unwrap(),
        );
    }
    assert_eq!(md5_file(&dir.join("base.img")), md5_file(&src));
}

#[test]
fn curl_backing_from_presigned_url() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.img");
    patterned(&src);
    let s = server_with(&src, "base.img");
    let st = Strato::new("redb");
    let url = st
        .cmd()
        .args([
            "presign",
            "s3://imgs/base.img",
            "--endpoint",
            &s.endpoint,
            "--expires",
            "600",
        ])
        .env("STRATO_ACCESS_KEY", &s.access_key)
        .env("STRATO_SECRET_KEY", &s.secret_key)
        .output()
        .unwrap();
    assert!(
        url.status.success(),
        "{}",
        String::from_utf8_lossy(&url.stderr)
    );
    let url = String::from_utf8(url.stdout).unwrap().trim().to_string();
    assert!(
        url.starts_with("http://") && url.contains("X-Amz-Signature"),
        "{url}"
    );
    let ov = tmp.path().join("vm.qcow2");
    st.ok(&[
        "overlay",
        "create",
        "--backing",
        &url,
        "--size",
        &(8u64 << 20).to_string(),
        ov.to_str().unwrap(),
    ]);
    let info = run_tool(
        Command::new(require_tool("qemu-img"))
            .args(["info", "--backing-chain"])
            .arg(&ov),
    );
    assert!(info.contains("backing file format: raw"), "{info}");
    assert!(info.contains("virtual size: 8 MiB"), "{info}");
    let ovs = ov.to_str().unwrap();
    qemu_io(
        &["-c", "read -P 0xab 0 4M", "-c", "read -P 0xcd 4M 4M"],
        ovs,
    );
    qemu_io(
        &[
            "-c",
            "write -P 0x11 0 64k",
            "-c",
            "read -P 0x11 0 64k",
            "-c",
            "read -P 0xab 64k 64k",
        ],
        ovs,
    );
}
