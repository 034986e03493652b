//! The store through the `strato` command, as a user drives it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;

const ENGINES: [&str; 2] = ["redb", "sled"];

#[test]
fn round_trips_through_the_cli() {
    for engine in ENGINES {
        let s = Strato::new(engine);
        s.ok(&["mb", "bkt"]);
        let tmp = s.dir.path();
        let sizes = [0usize, 1, 16383, 16385, 65535, 65537, 262_143, 262_145];
        for chunking in ["auto", "cdc", "block", "fixed:4096"] {
            for (i, n) in sizes.iter().enumerate() {
                let src = tmp.join("src");
                let data = write_random(&src, *n, i as u64);
                let key = format!("bkt/{chunking}-{n}");
                let put = s.put(&src, &key, chunking);
                assert_eq!(put["etag"], md5_hex(&data));
                let out = tmp.join("out");
                s.ok(&["get", &key, out.to_str().unwrap()]);
                assert_eq!(
                    std::fs::read(&out).unwrap(),
                    data,
                    "{engine} {chunking} {n}"
                );
            }
        }
        let fsck = s.json(&["fsck"]);
        assert_eq!(fsck["problems"].as_array().unwrap().len(), 0);
    }
}

#[test]
fn hundred_mib_random_and_ranges_at_chunk_edges() {
    let s = Strato::new("redb");
    s.ok(&["mb", "bkt"]);
    let src = s.dir.path().join("big");
    let data = write_random(&src, 100 << 20, 42);
    let put = s.put(&src, "bkt/big", "fixed:65536");
    assert_eq!(put["etag"], md5_hex(&data));
    let out = s.dir.path().join("out");
    s.ok(&["get", "bkt/big", out.to_str().unwrap()]);
    assert_eq!(md5_file(&out), md5_hex(&data));
    for (a, b) in [
        (0u64, 0u64),
        (65535, 65536),
        (65536, 65536 + 65535),
        (1, 200_000),
        ((100 << 20) - 1, (100 << 20) - 1),
    ] {
        let spec = format!("{a}-{b}");
        s.ok(&["get", "bkt/big", out.to_str().unwrap(), "--range", &spec]);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            &data[a as usize..=b as usize],
            "range {spec}"
        );
    }
    s.ok(&["get", "bkt/big", out.to_str().unwrap(), "--range", "-10"]);
    assert_eq!(std::fs::read(&out).unwrap(), &data[data.len() - 10..]);
    let err = s.fails(&[
        "get",
        "bkt/big",
        out.to_str().unwrap(),
        "--range",
        "104857600-",
    ]);
    assert!(err.contains("invalid range"), "{err}");
}

#[test]
fn sparse_image_stays_sparse_and_costs_nothing_for_zeros() {
    let s = Strato::new("redb");
    s.ok(&["mb", "img"]);
    let src = s.dir.path().join("disk.raw");
    let mut data = vec![0u8; 64 << 20];
    data[10 << 20..(10 << 20) + 300_000].copy_from_slice(&random_bytes(300_000, 1));
    std::fs::write(&src, &data).unwrap();
    let put = s.put(&src, "img/disk.raw", "auto");
    assert!(
        put["profile"].as_str().unwrap().starts_with("block:"),
        "{put}"
    );
    assert!(put["new_bytes"].as_u64().unwrap() < 400_000, "{put}");
    let out = s.dir.path().join("copy.raw");
    s.ok(&["get", "img/disk.raw", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated < 4 << 20,
        "the copy allocates {allocated} bytes; zero blocks should be holes"
    );
}

#[test]
fn dedup_same_data_twice_and_a_changed_copy() {
    let s = Strato::new("redb");
    s.ok(&["mb", "bkt"]);
    let src = s.dir.path().join("a");
    let mut data = write_random(&src, 256 << 20, 7);
    s.put(&src, "bkt/a", "cdc");
    let after_first = s.stored_bytes();
    s.put(&src, "bkt/b", "cdc");
    let after_second = s.stored_bytes();
    assert!(
        (after_second - after_first) * 100 < after_first,
        "storing the same 256 MiB again grew the store by {} bytes",
        after_second - after_first
    );
    let mid = data.len() / 2;
    data[mid..mid + (1 << 20)].copy_from_slice(&random_bytes(1 << 20, 8));
    std::fs::write(&src, &data).unwrap();
    s.put(&src, "bkt/c", "cdc");
    let grew = s.stored_bytes() - after_second;
    assert!(
        grew < 4 << 20,
        "a 1 MiB change grew the store by {grew} bytes"
    );
    drop(data);
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let s = Strato::new("redb");
    s.ok(&["mb", "bkt"]);
    let src = s.dir.path().join("f");
    write_random(&src, 1000, 1);
    s.put(&src, "bkt/keep", "auto");
    let before = s.json(&["stats"]);

    let err = s.fails(&["put", "/nonexistent/file", "bkt/x"]);
    assert!(err.contains("cannot read /nonexistent/file"), "{err}");
    let unreadable = s.dir.path().join("dir-not-file");
    std::fs::create_dir(&unreadable).unwrap();
    let err = s.fails(&["put", unreadable.to_str().unwrap(), "bkt/x"]);
    assert!(err.contains("error"), "{err}");
    for bad in ["UPPER", "ab", "a_b", "-ab", "192.168.0.1", "a..b"] {
        let err = s.fails(&["mb", "--", bad]);
        assert!(err.contains("invalid bucket name"), "{bad}: {err}");
    }
    let err = s.fails(&[
        "get",
        "bkt/missing",
        s.dir.path().join("o").to_str().unwrap(),
    ]);
    assert!(err.contains("no such object: bkt/missing"), "{err}");
    assert!(!s.dir.path().join("o").exists());
    let err = s.fails(&["put", src.to_str().unwrap(), "nobucket/x"]);
    assert!(err.contains("no such bucket"), "{err}");
    let err = s.fails(&[
        "put",
        src.to_str().unwrap(),
        "bkt/x",
        "--chunking",
        "fixed:3",
    ]);
    assert!(err.contains("invalid chunking"), "{err}");
    let err = s.fails(&["rb", "bkt"]);
    assert!(err.contains("not empty"), "{err}");
    let err = s.fails(&["rm", "bkt/missing"]);
    assert!(err.contains("no such object"), "{err}");

    let after = s.json(&["stats"]);
    assert_eq!(before["objects"], after["objects"]);
    assert_eq!(before["stored_bytes"], after["stored_bytes"]);
    assert_eq!(before["indexed_chunks"], after["indexed_chunks"]);
}

#[test]
fn a_flipped_byte_is_caught_by_get_and_fsck() {
    for engine in ENGINES {
        let s = Strato::new(engine);
        s.ok(&["mb", "bkt"]);
        let src = s.dir.path().join("f");
        let data = write_random(&src, 2 << 20, 3);
        s.put(&src, "bkt/victim", "cdc");
        let other = s.dir.path().join("g");
        let other_data = write_random(&other, 300_000, 4);
        s.put(&other, "bkt/other", "cdc");
        let seg_dir = s.data_dir().join("segments");
        let seg = std::fs::read_dir(&seg_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[1 << 20] ^= 0x01;
        std::fs::write(&seg, bytes).unwrap();

        let out = s.dir.path().join("out");
        let err = s.fails(&["get", "bkt/victim", out.to_str().unwrap()]);
        assert!(err.contains("integrity error in bkt/victim"), "{err}");
        assert!(!out.exists(), "no partial file left behind");
        s.ok(&["get", "bkt/other", out.to_str().unwrap()]);
        assert_eq!(std::fs::read(&out).unwrap(), other_data);
        let fsck = s.run(&["fsck"]);
        assert!(!fsck.status.success());
        let text = String::from_utf8_lossy(&fsck.stdout);
        assert!(
            text.contains("corrupt chunk") && text.contains("bkt/victim"),
            "{text}"
        );
        assert!(!text.contains("bkt/other"), "{text}");
        drop(data);
    }
}

#[test]
fn gc_dry_run_changes_nothing_and_gc_reclaims() {
    let s = Strato::new("sled");
    s.ok(&["mb", "bkt"]);
    let src = s.dir.path().join("f");
    write_random(&src, 8 << 20, 5);
    s.put(&src, "bkt/a", "cdc");
    s.ok(&["rm", "bkt/a"]);
    let plan = s.json(&["gc", "--dry-run", "--grace", "0"]);
    assert!(plan["reclaim_bytes"].as_u64().unwrap() >= 8 << 20);
    let plan2 = s.json(&["gc", "--dry-run", "--grace", "0"]);
    assert_eq!(
        plan["reclaim_bytes"], plan2["reclaim_bytes"],
        "a dry run changes nothing"
    );
    let within_grace = s.json(&["gc", "--dry-run"]);
    assert_eq!(within_grace["reclaim_chunks"], 0);
    let done = s.json(&["gc", "--grace", "0"]);
    assert!(done["bytes_freed_on_disk"].as_u64().unwrap() >= 8 << 20);
    assert_eq!(s.json(&["stats"])["indexed_chunks"], 0);
    s.ok(&["fsck"]);
}

#[test]
fn get_to_a_device_writes_through_and_leaves_it_alone() {
    use std::os::unix::fs::FileTypeExt;
    let s = Strato::new("redb");
    s.ok(&["mb", "bkt"]);
    let src = s.dir.path().join("f");
    write_random(&src, 200_000, 9);
    s.put(&src, "bkt/x", "auto");
    s.ok(&["get", "bkt/x", "/dev/null"]);
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(
        meta.file_type().is_char_device(),
        "/dev/null must stay a device"
    );
    assert!(!std::path::Path::new("/dev/null.strato-partial").exists());
    // standard output too
    let out = s.run(&["get", "bkt/x", "-"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(&src).unwrap());
}
