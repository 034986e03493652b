//! `strato pull`: delta pulls into a node-local cache, sparse output,
//! resume after SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn pull_cmd(s: &Server, image: &str, cache: &Path, out: &Path) -> Command {
    let mut c = Command::new(strato_bin());
    c.args([
        "--json",
        "pull",
        image,
        "--endpoint",
        &s.endpoint,
        "--cache",
    ])
    .arg(cache)
    .arg("--out")
    .arg(out)
    .env("STRATO_ACCESS_KEY", &s.access_key)
    .env("STRATO_SECRET_KEY", &s.secret_key);
    c
}

fn pull(s: &Server, image: &str, cache: &Path, out: &Path) -> serde_json::Value {
    let o = run_tool(&mut pull_cmd(s, image, cache, out));
    serde_json::from_str(&o).unwrap()
}

#[test]
fn delta_pull_moves_only_changed_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Strato::new("redb");
    // v1: 24 MiB of data with an 8 MiB zero hole in the middle.
    let mut v1 = random_bytes(24 << 20, 1);
    v1[8 << 20..16 << 20].fill(0);
    // v2: five 4 KiB blocks rewritten, spread over the image.
    let mut v2 = v1.clone();
    for (i, off) in [1u64 << 20, 5 << 20, 17 << 20, 20 << 20, 23 << 20]
        .iter()
        .enumerate()
    {
        let o = *off as usize;
        v2[o..o + 4096].copy_from_slice(&random_bytes(4096, 100 + i as u64));
    }
    let (f1, f2) = (tmp.path().join("v1.img"), tmp.path().join("v2.img"));
    std::fs::write(&f1, &v1).unwrap();
    std::fs::write(&f2, &v2).unwrap();
    st.ok(&["mb", "imgs"]);
    st.put(&f1, "imgs/v1.img", "block");
    st.put(&f2, "imgs/v2.img", "block");
    let s = Server::start_with(st, &[]);

    let cache = tmp.path().join("cache");
    let out1 = tmp.path().join("out1.img");
    let r1 = pull(&s, "s3://imgs/v1.img", &cache, &out1);
    assert_eq!(md5_file(&out1), md5_hex(&v1));
    assert_eq!(r1["cached_chunks"], 0);
    let size = v1.len() as u64;
    let fetched1 = r1["fetched_bytes"].as_u64().unwrap();
    assert!(
        fetched1 <= size - (8 << 20),
        "the zero hole is never moved: {r1}"
    );
    // Sparse: the hole takes no blocks on disk.
    let used = std::fs::metadata(&out1).unwrap().blocks() * 512;
    assert!(
        used <= size - (7 << 20),
        "{used} bytes allocated for {size}"
    );

    let out2 = tmp.path().join("out2.img");
    let r2 = pull(&s, "s3://imgs/v2.img", &cache, &out2);
    assert_eq!(md5_file(&out2), md5_hex(&v2));
    let fetched_chunks = r2["fetched_chunks"].as_u64().unwrap();
    let fetched = r2["fetched_bytes"].as_u64().unwrap();
    // Each changed block changes at most the chunk it falls in and a neighbour.
    assert!((1..=10).contains(&fetched_chunks), "{r2}");
    assert!(fetched * 10 < size, "moved {fetched} of {size} bytes: {r2}");
    assert_eq!(
        r2["cached_chunks"].as_u64().unwrap() + fetched_chunks,
        r2["unique_chunks"].as_u64().unwrap()
    );
    eprintln!("delta pull: v1 moved {fetched1} B, v2 moved {fetched} B in {fetched_chunks} chunks of {size} B");

    // Pulling again moves nothing.
    let r3 = pull(&s, "s3://imgs/v2.img", &cache, &out2);
    assert_eq!(r3["fetched_bytes"], 0);
}

#[test]
fn pull_killed_by_sigkill_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let st = Strato::new("redb");
    let data = random_bytes(96 << 20, 3);
    let f = tmp.path().join("big.img");
    std::fs::write(&f, &data).unwrap();
    st.ok(&["mb", "imgs"]);
    st.put(&f, "imgs/big.img", "block");
    let s = Server::start_with(st, &[]);
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out.img");

    let mut child = pull_cmd(&s, "s3://imgs/big.img", &cache, &out)
        .args(["--parallel", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once some chunks have reached the cache's segments (a fixed
    // sleep kills before the first chunk on a loaded machine), bounded.
    let segs = cache.join("segments");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline && dir_bytes(&segs) < (4 << 20) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();

    let r = pull(&s, "s3://imgs/big.img", &cache, &out);
    assert_eq!(md5_file(&out), md5_hex(&data));
    let (cached, unique) = (
        r["cached_chunks"].as_u64().unwrap(),
        r["unique_chunks"].as_u64().unwrap(),
    );
    assert_eq!(cached + r["fetched_chunks"].as_u64().unwrap(), unique);
    if !status.success() {
        assert!(cached > 0, "the killed pull kept nothing: {r}");
        eprintln!("resumed after SIGKILL: {cached} of {unique} chunks were already cached");
    }
    assert!(!tmp.path().join(".out.img.strato-part").exists());
}

/// Bytes in the files of `dir` (0 if it does not exist yet).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
