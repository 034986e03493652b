//! Nothing acknowledged is ever lost: a child `strato put` of 512 MiB is
//! killed with SIGKILL at random moments, for both metadata engines. After
//! every kill, every acknowledged object is intact (ETag and bytes), the
//! killed object is absent or complete, and at the end `strato fsck` is clean
//! after `strato gc`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use common::*;

const BIG: usize = 512 << 20;
const TRIALS: usize = 20;

/// Make the big file's content unique for this trial by changing one word in
/// every 16 KiB, so every chunk is new and the write path really writes.
fn vary(data: &mut [u8], trial: usize) {
    for off in (0..data.len()).step_by(16 << 10) {
        data[off..off + 8]
            .copy_from_slice(&(trial as u64 * 0x9E37_79B9 + off as u64).to_le_bytes());
    }
}

fn segment_bytes(s: &Strato) -> u64 {
    std::fs::read_dir(s.data_dir().join("segments"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn listing(s: &Strato) -> BTreeMap<String, String> {
    let v = s.json(&["ls", "bkt"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["key"].as_str().unwrap().to_string(),
                o["etag"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn crash_trials(engine: &'static str) {
    let s = Strato::new(engine);
    s.ok(&["mb", "bkt"]);
    let t = s.dir.path();
    let big_path = t.join("big");
    let mut big = random_bytes(BIG, 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    // key -> md5 of everything acknowledged and not deleted since
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut kills = 0;

    vary(&mut big, 1000);
    std::fs::write(&big_path, &big).unwrap();
    s.put(&big_path, "bkt/first", "cdc");
    let first_md5 = md5_hex(&big);
    acked.insert("first".into(), first_md5.clone());

    for trial in 0..TRIALS {
        // A small object acknowledged before each crash.
        let small = t.join("small");
        let small_data = write_random(&small, 100_000 + trial * 1000, trial as u64);
        s.put(&small, &format!("bkt/small-{trial}"), "auto");
        acked.insert(format!("small-{trial}"), md5_hex(&small_data));

        vary(&mut big, trial);
        std::fs::write(&big_path, &big).unwrap();
        let big_md5 = md5_hex(&big);
        let key = format!("big-{trial}");
        let mut child = s
            .cmd()
            .args([
                "put",
                big_path.to_str().unwrap(),
                &format!("bkt/{key}"),
                "--chunking",
                "cdc",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill once a random share of the object has reached the segments
        // (near 100 %: in the final fsync and metadata commit), or right at
        // the start.
        let base = segment_bytes(&s);
        let share: f64 = match rng.gen_range(0..10) {
            0 | 1 => 0.0,
            2 | 3 => rng.gen_range(0.97..1.01), // around the final fsync and commit
            _ => rng.gen_range(0.0..1.0),
        };
        let target = base + (share * BIG as f64) as u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline && segment_bytes(&s) < target {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if share > 1.0 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
        }
        let killed = child.kill().is_ok();
        let status = child.wait().unwrap();
        let acknowledged = status.success();
        if killed && !acknowledged {
            kills += 1;
        }

        let now = listing(&s);
        for (k, md5) in &acked {
            assert_eq!(
                now.get(k),
                Some(md5),
                "{engine} trial {trial}: acknowledged {k} lost or changed"
            );
        }
        for k in &deleted {
            assert!(
                !now.contains_key(k),
                "{engine} trial {trial}: deleted {k} came back"
            );
        }
        match now.get(&key) {
            None => assert!(!acknowledged, "{engine}: acknowledged {key} is missing"),
            Some(etag) => {
                assert_eq!(
                    etag, &big_md5,
                    "{engine}: {key} is present but not complete"
                );
                let out = t.join("out");
                s.ok(&["get", &format!("bkt/{key}"), out.to_str().unwrap()]);
                assert_eq!(md5_file(&out), big_md5, "{engine}: {key} bytes");
                std::fs::remove_file(&out).unwrap();
                // Keep the disk bounded: a completed big object is verified, then deleted.
                s.ok(&["rm", &format!("bkt/{key}")]);
                deleted.push(key.clone());
            }
        }
        // Small objects are verified byte for byte after every crash.
        for (k, md5) in acked.iter().filter(|(k, _)| k.starts_with("small")) {
            let out = t.join("small-out");
            s.ok(&["get", &format!("bkt/{k}"), out.to_str().unwrap()]);
            assert_eq!(&md5_file(&out), md5, "{engine}: bytes of {k}");
        }
        if trial % 5 == 4 {
            s.ok(&["gc", "--grace", "0"]);
        }
    }
    assert!(
        kills >= TRIALS / 2,
        "{engine}: only {kills} of {TRIALS} puts were actually interrupted"
    );
    s.ok(&["gc", "--grace", "0"]);
    let fsck = s.run(&["fsck"]);
    assert!(
        fsck.status.success(),
        "{engine}: fsck after gc: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let out = t.join("out");
    s.ok(&["get", "bkt/first", out.to_str().unwrap()]);
    assert_eq!(md5_file(&out), first_md5);
    eprintln!("{engine}: {kills} of {TRIALS} puts killed mid-way, nothing acknowledged lost");
}

#[test]
fn kill_9_during_put_loses_nothing_redb() {
    crash_trials("redb");
}

#[test]
fn kill_9_during_put_loses_nothing_sled() {
    crash_trials("sled");
}
