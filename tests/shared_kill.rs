//! A frontend of a shared deployment SIGKILLed at random points of a
//! 256 MiB PUT, 20 times (issue 20): while it ingests, it also acknowledges
//! small PUTs; after each kill the other frontend must still serve, every
//! acknowledged object must be there and intact, and the big object must be
//! either whole (its PUT had been acknowledged) or invisible. Then `strato
//! gc` reclaims the cut PUTs' segment objects, everything acknowledged still
//! reads back (cold cache) and `strato fsck` is clean.
//!
//! One Ceph cluster on bluestore for this binary: the partial uploads'
//! segment objects are orphans until shared-mode GC exists, and memstore
//! would keep them all in RAM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "common/frontend.rs"]
mod frontend;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use frontend::Frontend;
use rand::Rng;

const TRIALS: usize = 20;
const BIG: usize = 256 << 20;

fn ceph() -> &'static strato_testbed::Ceph {
    static CEPH: OnceLock<strato_testbed::Ceph> = OnceLock::new();
    CEPH.get_or_init(|| {
        strato_testbed::Ceph::start_with(strato_testbed::CephOptions { bluestore: true })
            .unwrap_or_else(|e| panic!("cannot start the Ceph testbed (bluestore): {e}"))
    })
}

/// The settings every process of this deployment gets.
fn settings(bucket: &str, url: &str) -> Vec<(&'static str, String)> {
    let ceph = ceph();
    vec![
        ("STRATO_STORAGE_BACKEND", "s3".to_string()),
        ("STRATO_S3_ENDPOINT", ceph.endpoint()),
        ("STRATO_S3_BUCKET", bucket.to_string()),
        ("STRATO_S3_PREFIX", "strato".to_string()),
        ("STRATO_S3_ACCESS_KEY", ceph.access_key().to_string()),
        ("STRATO_S3_SECRET_KEY", ceph.secret_key().to_string()),
        ("STRATO_CACHE_BYTES", (64u64 << 20).to_string()),
        ("STRATO_META_URL", url.to_string()),
    ]
}

fn frontend(bucket: &str, url: &str) -> Frontend {
    Frontend::start("postgres", &settings(bucket, url))
}

/// `strato ARGS` as an operator runs it against the shared repository
/// (its own scratch data directory, the deployment's settings).
fn admin(bucket: &str, url: &str, args: &[&str]) -> std::process::Output {
    let scratch = common::Strato::new("postgres");
    std::fs::create_dir_all(scratch.dir.path()).unwrap();
    let mut cmd = scratch.cmd();
    cmd.args(args);
    for (k, v) in settings(bucket, url) {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

async fn get(c: &aws_sdk_s3::Client, key: &str) -> Result<Vec<u8>, String> {
    let out = c
        .get_object()
        .bucket("images")
        .key(key)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(out.body.collect().await.unwrap().into_bytes().to_vec())
}

#[test]
fn frontend_sigkilled_mid_put_twenty_times() {
    let pg = strato_testbed::shared_postgres();
    let url = pg.create_database(&format!("kill_{:08x}", rand::random::<u32>()));
    let bucket = format!("kill-{:08x}", rand::random::<u32>());
    ceph().create_bucket(&bucket);
    let survivor = frontend(&bucket, &url);
    let cs = survivor.client();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let small = Arc::new(common::random_bytes(64 << 10, 8));
    let steady = common::random_bytes(4 << 20, 9);
    rt.block_on(async {
        cs.create_bucket().bucket("images").send().await.unwrap();
        cs.put_object()
            .bucket("images")
            .key("steady")
            .body(ByteStream::from(steady.clone()))
            .send()
            .await
            .unwrap();
    });

    // How long one big PUT takes here, so that the kill points cover the
    // whole PUT and a little after it; that frontend is then killed right
    // after its acknowledgement.
    let mut big_acked: Vec<(String, u64)> = Vec::new();
    let calibrate = {
        let mut victim = frontend(&bucket, &url);
        let cv = victim.client();
        let t = Instant::now();
        rt.block_on(async {
            cv.put_object()
                .bucket("images")
                .key("big-calibration")
                .body(ByteStream::from(common::random_bytes(BIG, 1000)))
                .send()
                .await
                .unwrap();
        });
        let took = t.elapsed();
        victim.server.child.kill().unwrap();
        victim.server.child.wait().unwrap();
        big_acked.push(("big-calibration".to_string(), 1000));
        took
    };
    let longest = u64::try_from(calibrate.as_millis() * 13 / 10)
        .unwrap()
        .max(500);

    let mut acked_small: Vec<String> = Vec::new();
    let mut rng = rand::thread_rng();
    let t_all = Instant::now();
    for trial in 0..TRIALS {
        // New bytes every trial: an acknowledged big PUT must not turn the
        // later ones into dedup hits.
        let seed = 7 + trial as u64;
        let big = Arc::new(common::random_bytes(BIG, seed));
        let mut victim = frontend(&bucket, &url);
        let cv = victim.client();
        let kill_after = Duration::from_millis(rng.gen_range(50..longest));
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let big_key = format!("big-{trial}");
        let big_ok = rt.block_on(async {
            let big_put = {
                let (cv, big, key) = (cv.clone(), big.clone(), big_key.clone());
                tokio::spawn(async move {
                    cv.put_object()
                        .bucket("images")
                        .key(key)
                        .body(ByteStream::from(big.to_vec()))
                        .send()
                        .await
                        .is_ok()
                })
            };
            let smalls = {
                let (cv, small, acked) = (cv.clone(), small.clone(), acked.clone());
                tokio::spawn(async move {
                    // Bounded: at most 10 000 small PUTs, stops at the first
                    // failure (the kill).
                    for i in 0..10_000 {
                        let key = format!("small-{trial}-{i}");
                        let mut body = small.to_vec();
                        body[..8].copy_from_slice(&(trial as u64 * 100_000 + i).to_le_bytes());
                        let r = cv
                            .put_object()
                            .bucket("images")
                            .key(&key)
                            .body(ByteStream::from(body))
                            .send()
                            .await;
                        if r.is_err() {
                            break;
                        }
                        acked.lock().unwrap().push(key);
                    }
                })
            };
            tokio::time::sleep(kill_after).await;
            victim.server.child.kill().unwrap();
            victim.server.child.wait().unwrap();
            let big_ok = big_put.await.unwrap();
            smalls.await.unwrap();
            big_ok
        });
        // The other frontend never noticed.
        rt.block_on(async {
            assert!(get(&cs, "steady").await.unwrap() == steady, "trial {trial}");
        });
        acked_small.extend(acked.lock().unwrap().drain(..));
        if big_ok {
            big_acked.push((big_key.clone(), seed));
        } else {
            rt.block_on(async {
                let e = cs
                    .head_object()
                    .bucket("images")
                    .key(&big_key)
                    .send()
                    .await
                    .unwrap_err();
                assert_eq!(
                    e.raw_response().map(|r| r.status().as_u16()),
                    Some(404),
                    "trial {trial}: an unacknowledged PUT must stay invisible"
                );
            });
        }
        eprintln!(
            "trial {trial}: killed after {} ms, big PUT {}, {} small PUTs acknowledged so far",
            kill_after.as_millis(),
            if big_ok { "acknowledged" } else { "cut" },
            acked_small.len()
        );
    }

    // Everything acknowledged, read back through the survivor and through
    // a frontend started afresh.
    let fresh = frontend(&bucket, &url);
    for c in [&cs, &fresh.client()] {
        rt.block_on(async {
            for (key, seed) in &big_acked {
                let want = common::random_bytes(BIG, *seed);
                assert!(get(c, key).await.unwrap() == want, "{key}");
            }
            for key in &acked_small {
                let got = get(c, key).await.unwrap_or_else(|e| panic!("{key}: {e}"));
                assert_eq!(got.len(), small.len(), "{key}");
                assert_eq!(got[8..], small[8..], "{key}");
            }
        });
    }
    // GC from an operator's shell reclaims the cut PUTs' segment objects
    // (their registrations went stale with the killed frontends), then
    // everything acknowledged still reads back, and fsck is clean.
    let segments = || {
        let c = ceph().s3_client();
        let b = bucket.clone();
        rt.block_on(async move {
            let mut n = 0usize;
            let mut token = None;
            for _ in 0..1000 {
                let r = c
                    .list_objects_v2()
                    .bucket(&b)
                    .prefix("strato/segments/")
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .unwrap();
                n += r.contents().len();
                match r.next_continuation_token() {
                    Some(t) => token = Some(t.to_string()),
                    None => break,
                }
            }
            n
        })
    };
    // The same command without the [storage] settings is refused: the
    // metadata knows its segments are in an object store.
    let scratch = common::Strato::new("postgres");
    std::fs::create_dir_all(scratch.dir.path()).unwrap();
    let out = scratch
        .cmd()
        .args(["gc", "--grace", "2s"])
        .env("STRATO_META_URL", &url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("s3 segment backend"), "{err}");

    let before_gc = segments();
    std::thread::sleep(Duration::from_millis(2100));
    let out = admin(&bucket, &url, &["gc", "--grace", "2s"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after_gc = segments();
    eprintln!(
        "{}segment objects: {before_gc} before gc, {after_gc} after",
        said
    );
    assert!(after_gc < before_gc, "{said}");
    let cold = {
        let mut env = settings(&bucket, &url);
        env.retain(|(k, _)| *k != "STRATO_CACHE_BYTES");
        env.push(("STRATO_CACHE_BYTES", "0".to_string()));
        Frontend::start("postgres", &env)
    };
    rt.block_on(async {
        let c = cold.client();
        for (key, seed) in &big_acked {
            let want = common::random_bytes(BIG, *seed);
            assert!(get(&c, key).await.unwrap() == want, "{key} after gc");
        }
        for key in &acked_small {
            let got = get(&c, key)
                .await
                .unwrap_or_else(|e| panic!("{key} after gc: {e}"));
            assert_eq!(got[8..], small[8..], "{key} after gc");
        }
    });
    let out = admin(&bucket, &url, &["fsck"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "fsck: {said}");
    eprintln!("{said}");

    let cut = TRIALS + 1 - big_acked.len();
    eprintln!(
        "{TRIALS} trials in {:.1} s (one 256 MiB PUT: {:.1} s): {} big PUTs acknowledged, {cut} cut; {} small PUTs acknowledged, all intact",
        t_all.elapsed().as_secs_f64(),
        calibrate.as_secs_f64(),
        big_acked.len() - 1,
        acked_small.len()
    );
    assert!(
        cut > 0,
        "no trial cut the big PUT: the kill points missed it"
    );
}
