//! Real filesystem images: `mkfs.ext4 -d` from a directory of files, their
//! qcow2 forms from `qemu-img convert`, and a second version of the image.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// A directory tree of files of assorted sizes and kinds.
fn populate(dir: &Path, seed: u64, count: usize) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut total = 0;
    for i in 0..count {
        let sub = dir.join(format!("d{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let size = 3000 + (i * 7919 % 400_000);
        let data = if i % 3 == 0 {
            // text-like: compressible, repetitive lines
            (0..size)
                .map(|j| b"abcdefghij klmnop\n"[(j + i) % 18])
                .collect()
        } else {
            random_bytes(size, seed * 10_000 + i as u64)
        };
        std::fs::write(sub.join(format!("file{i}.bin")), &data).unwrap();
        total += size as u64;
    }
    total
}

fn mkfs(dir: &Path, image: &Path) {
    let mkfs = require_tool("mkfs.ext4");
    let _ = std::fs::remove_file(image);
    run_tool(
        Command::new(mkfs)
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-U",
                "0b9a2b8e-58d4-4b1e-9d5c-5a3b0d3b7f11",
            ])
            .args([
                "-E",
                "root_owner=0:0,hash_seed=6e0f16a7-6c2e-4d4e-9e6d-9f7e0b1a2c3d",
            ])
            .arg("-d")
            .arg(dir)
            .arg(image)
            .arg("96M")
            .env("E2FSPROGS_FAKE_TIME", "1700000000"),
    );
}

fn to_qcow2(raw: &Path, qcow: &Path) {
    run_tool(
        Command::new(require_tool("qemu-img"))
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(qcow),
    );
}

fn non_zero_bytes(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    data.chunks(4096)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(|b| b.len() as u64)
        .sum()
}

#[test]
fn raw_and_qcow2_forms_and_a_second_version_deduplicate() {
    let s = Strato::new("redb");
    s.ok(&["mb", "images"]);
    let t = s.dir.path();
    let tree = t.join("tree");
    populate(&tree, 1, 120);
    let v1 = t.join("v1.raw");
    mkfs(&tree, &v1);
    let v1q = t.join("v1.qcow2");
    to_qcow2(&v1, &v1q);

    let p1 = s.put(&v1, "images/v1.raw", "auto");
    assert!(
        p1["profile"].as_str().unwrap().starts_with("block:"),
        "{p1}"
    );
    let p1q = s.put(&v1q, "images/v1.qcow2", "auto");
    assert!(
        p1q["profile"].as_str().unwrap().starts_with("block:"),
        "{p1q}"
    );
    let qcow_nonzero = non_zero_bytes(&v1q);
    let added = p1q["new_bytes"].as_u64().unwrap();
    assert!(
        added * 50 < qcow_nonzero,
        "the qcow2 form added {added} bytes, over 2% of its {qcow_nonzero} non-zero bytes"
    );

    // v2: three files added, two removed, one rewritten
    std::fs::remove_file(tree.join("d1/file1.bin")).unwrap();
    std::fs::remove_file(tree.join("d2/file2.bin")).unwrap();
    let mut changed = 0u64;
    for (i, size) in [
        (1000usize, 900_000usize),
        (1001, 1_500_000),
        (1002, 400_000),
    ] {
        std::fs::write(
            tree.join(format!("d3/new{i}.bin")),
            random_bytes(size, 9000 + i as u64),
        )
        .unwrap();
        changed += size as u64;
    }
    std::fs::write(tree.join("d4/file4.bin"), random_bytes(200_000, 77)).unwrap();
    changed += 200_000;
    let v2 = t.join("v2.raw");
    mkfs(&tree, &v2);
    let p2 = s.put(&v2, "images/v2.raw", "auto");
    let added = p2["new_bytes"].as_u64().unwrap();
    eprintln!("v2.raw added {added} bytes for {changed} bytes of changed files");
    assert!(
        added < changed + changed / 2 + (1 << 20),
        "v2 added {added} bytes for {changed} bytes of changed files"
    );
    let v2q = t.join("v2.qcow2");
    to_qcow2(&v2, &v2q);
    let p2q = s.put(&v2q, "images/v2.qcow2", "auto");
    let added = p2q["new_bytes"].as_u64().unwrap();
    assert!(
        added * 50 < non_zero_bytes(&v2q),
        "v2.qcow2 added {added} bytes"
    );

    // Every form reads back byte-identical, and qemu-img agrees the copy is sound.
    for (key, src) in [
        ("v1.raw", &v1),
        ("v1.qcow2", &v1q),
        ("v2.raw", &v2),
        ("v2.qcow2", &v2q),
    ] {
        let out = t.join(format!("out-{key}"));
        s.ok(&["get", &format!("images/{key}"), out.to_str().unwrap()]);
        assert_eq!(md5_file(&out), md5_file(src), "{key}");
    }
    run_tool(
        Command::new(require_tool("qemu-img"))
            .args(["check"])
            .arg(t.join("out-v2.qcow2")),
    );
    s.ok(&["fsck"]);
}
