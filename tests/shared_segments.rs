//! `strato serve` with `[storage] backend = "s3"` (issue 20, the segment
//! half) against the testbed's radosgw, driven by aws-sdk-s3 as a user
//! would: one frontend with the embedded metadata, then two frontends over
//! one PostgreSQL database and one bucket.
//!
//! Tests run one at a time (GATE): one of them stops radosgw.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "common/frontend.rs"]
mod frontend;

use aws_sdk_s3::primitives::ByteStream;
use frontend::Frontend;

static GATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A frontend storing segments in `bucket`; metadata in PostgreSQL at
/// `url`, else redb in its data directory.
fn frontend(bucket: &str, url: Option<&str>) -> Frontend {
    let ceph = strato_testbed::shared_ceph();
    let mut env = vec![
        ("STRATO_STORAGE_BACKEND", "s3".to_string()),
        ("STRATO_S3_ENDPOINT", ceph.endpoint()),
        ("STRATO_S3_BUCKET", bucket.to_string()),
        ("STRATO_S3_PREFIX", "strato".to_string()),
        ("STRATO_S3_ACCESS_KEY", ceph.access_key().to_string()),
        ("STRATO_S3_SECRET_KEY", ceph.secret_key().to_string()),
        ("STRATO_CACHE_BYTES", (64u64 << 20).to_string()),
    ];
    if let Some(url) = url {
        env.push(("STRATO_META_URL", url.to_string()));
    }
    Frontend::start(if url.is_some() { "postgres" } else { "redb" }, &env)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn new_bucket(tag: &str) -> String {
    let name = format!("{tag}-{:08x}", rand::random::<u32>());
    strato_testbed::shared_ceph().create_bucket(&name);
    name
}

async fn put(c: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {bucket}/{key}: {e:?}"));
}

async fn get(c: &aws_sdk_s3::Client, bucket: &str, key: &str, range: Option<&str>) -> Vec<u8> {
    let out = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_range(range.map(str::to_string))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {bucket}/{key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Segment objects strato wrote in the radosgw bucket.
async fn segment_objects(bucket: &str) -> Vec<String> {
    let c = strato_testbed::shared_ceph().s3_client();
    let mut keys = Vec::new();
    let mut token = None;
    for _ in 0..1000 {
        let r = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix("strato/segments/")
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap();
        keys.extend(
            r.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        match r.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    keys
}

#[test]
fn serve_with_s3_segments_put_get_range_and_outage() {
    let _g = GATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ceph = strato_testbed::shared_ceph();
    let bucket = new_bucket("serve");
    let f = frontend(&bucket, None);
    let line = f
        .banner
        .iter()
        .find(|l| l.trim_start().starts_with("storage"))
        .unwrap_or_else(|| panic!("no storage line in {:?}", f.banner));
    assert!(
        line.contains("s3") && line.contains(&ceph.endpoint()),
        "{line}"
    );
    assert!(line.contains(&bucket), "{line}");
    assert!(!f.banner.join("\n").contains(ceph.secret_key()));
    let c = f.client();
    rt().block_on(async {
        c.create_bucket().bucket("images").send().await.unwrap();
        let data = common::random_bytes(12 << 20, 1);
        put(&c, "images", "disk.raw", &data).await;
        let segs = segment_objects(&bucket).await;
        assert!(!segs.is_empty());
        assert!(get(&c, "images", "disk.raw", None).await == data);
        let part = get(&c, "images", "disk.raw", Some("bytes=5000000-6000000")).await;
        assert!(part == data[5_000_000..=6_000_000]);
        // The same bytes again: all dedup hits, no new segment object.
        put(&c, "images", "copy.raw", &data).await;
        assert_eq!(segment_objects(&bucket).await, segs);
        assert!(get(&c, "images", "copy.raw", None).await == data);

        // radosgw down: a PUT with new data answers 503 naming the backend,
        // and commits nothing.
        ceph.stop_rgw();
        let fresh = common::random_bytes(2 << 20, 2);
        let err = c
            .put_object()
            .bucket("images")
            .key("during")
            .body(ByteStream::from(fresh.clone()))
            .send()
            .await
            .unwrap_err();
        let status = err.raw_response().map(|r| r.status().as_u16());
        ceph.start_rgw();
        assert_eq!(status, Some(503), "{err:?}\n{}", f.stderr());
        let missing = c
            .head_object()
            .bucket("images")
            .key("during")
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            missing.raw_response().map(|r| r.status().as_u16()),
            Some(404)
        );
        assert!(f.stderr().contains("s3"), "{}", f.stderr());
        // Back up: it works again without a restart.
        put(&c, "images", "during", &fresh).await;
        assert!(get(&c, "images", "during", None).await == fresh);
    });
}

#[test]
fn two_frontends_one_database_one_bucket() {
    let _g = GATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pg = strato_testbed::shared_postgres();
    let url = pg.create_database(&format!("segs_{:08x}", rand::random::<u32>()));
    let bucket = new_bucket("shared");
    let f1 = frontend(&bucket, Some(&url));
    let f2 = frontend(&bucket, Some(&url));
    let (c1, c2) = (f1.client(), f2.client());
    rt().block_on(async {
        c1.create_bucket().bucket("images").send().await.unwrap();
        let data = common::random_bytes(10 << 20, 3);
        put(&c1, "images", "from-1", &data).await;
        // Bytes ingested by frontend 1 come back from frontend 2.
        assert!(get(&c2, "images", "from-1", None).await == data);
        assert!(
            get(&c2, "images", "from-1", Some("bytes=1000-2000000")).await
                == data[1000..=2_000_000]
        );
        let segs = segment_objects(&bucket).await;
        // The same data through the other frontend: each chunk once.
        put(&c2, "images", "from-2", &data).await;
        assert_eq!(segment_objects(&bucket).await, segs, "{}", f2.stderr());
        assert!(get(&c1, "images", "from-2", None).await == data);
        // New data through frontend 2 is readable on frontend 1.
        let other = common::random_bytes(3 << 20, 4);
        put(&c2, "images", "new-2", &other).await;
        assert!(get(&c1, "images", "new-2", None).await == other);
        assert!(segment_objects(&bucket).await.len() > segs.len());
    });
}

#[test]
fn two_frontends_multipart_races_and_concurrent_ingest() {
    let _g = GATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pg = strato_testbed::shared_postgres();
    let url = pg.create_database(&format!("race_{:08x}", rand::random::<u32>()));
    let bucket = new_bucket("race");
    let f1 = frontend(&bucket, Some(&url));
    let f2 = frontend(&bucket, Some(&url));
    let (c1, c2) = (f1.client(), f2.client());
    rt().block_on(async {
        c1.create_bucket().bucket("images").send().await.unwrap();

        // One multipart upload, its parts sent to different frontends and
        // completed through the one that did not create it.
        let p1 = common::random_bytes(5 << 20, 11);
        let p2 = common::random_bytes(5 << 20, 12);
        let p3 = common::random_bytes(1 << 20, 13);
        let up = c1
            .create_multipart_upload()
            .bucket("images")
            .key("mp")
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap().to_string();
        let mut parts = Vec::new();
        for (n, (c, data)) in [(&c1, &p1), (&c2, &p2), (&c1, &p3)].into_iter().enumerate() {
            let n = i32::try_from(n + 1).unwrap();
            let r = c
                .upload_part()
                .bucket("images")
                .key("mp")
                .upload_id(&id)
                .part_number(n)
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("part {n}: {e:?}"));
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n)
                    .e_tag(r.e_tag().unwrap())
                    .build(),
            );
        }
        let listed = c2
            .list_parts()
            .bucket("images")
            .key("mp")
            .upload_id(&id)
            .send()
            .await
            .unwrap();
        assert_eq!(listed.parts().len(), 3);
        c2.complete_multipart_upload()
            .bucket("images")
            .key("mp")
            .upload_id(&id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("complete: {e:?}\n{}", f2.stderr()));
        let whole: Vec<u8> = [p1, p2, p3].concat();
        assert!(get(&c1, "images", "mp", None).await == whole);
        assert!(get(&c2, "images", "mp", None).await == whole);

        // Create-only writes racing on the two frontends: exactly one wins
        // every round, and the object holds the winner's bytes.
        for round in 0..12u64 {
            let key = format!("once-{round}");
            let (a, b) = (
                common::random_bytes(256 << 10, 100 + round),
                common::random_bytes(256 << 10, 200 - round),
            );
            let put_once = |c: aws_sdk_s3::Client, data: Vec<u8>, key: String| async move {
                c.put_object()
                    .bucket("images")
                    .key(key)
                    .if_none_match("*")
                    .body(ByteStream::from(data))
                    .send()
                    .await
            };
            let (ra, rb) = tokio::join!(
                put_once(c1.clone(), a.clone(), key.clone()),
                put_once(c2.clone(), b.clone(), key.clone())
            );
            let lost = |r: &Result<
                aws_sdk_s3::operation::put_object::PutObjectOutput,
                aws_sdk_s3::error::SdkError<
                    aws_sdk_s3::operation::put_object::PutObjectError,
                    aws_sdk_s3::config::http::HttpResponse,
                >,
            >| match r {
                Ok(_) => false,
                Err(e) => {
                    let st = e.raw_response().map(|r| r.status().as_u16());
                    assert!(matches!(st, Some(412 | 409)), "round {round}: {e:?}");
                    true
                }
            };
            let (la, lb) = (lost(&ra), lost(&rb));
            assert!(
                la != lb,
                "round {round}: exactly one must win ({ra:?} / {rb:?})"
            );
            let want = if la { &b } else { &a };
            assert!(
                get(&c1, "images", &key, None).await == *want,
                "round {round}"
            );
            assert!(
                get(&c2, "images", &key, None).await == *want,
                "round {round}"
            );
        }

        // The same new image through both frontends at once: intact on both,
        // and stored at most twice (each chunk once, or a duplicate from
        // the race that GC can fold later).
        let before = segment_bytes(&bucket).await;
        let image = common::random_bytes(16 << 20, 21);
        let (r1, r2) = tokio::join!(
            c1.put_object()
                .bucket("images")
                .key("same-1")
                .body(ByteStream::from(image.clone()))
                .send(),
            c2.put_object()
                .bucket("images")
                .key("same-2")
                .body(ByteStream::from(image.clone()))
                .send()
        );
        r1.unwrap();
        r2.unwrap();
        for k in ["same-1", "same-2"] {
            assert!(get(&c1, "images", k, None).await == image, "{k}");
            assert!(get(&c2, "images", k, None).await == image, "{k}");
        }
        let added = segment_bytes(&bucket).await - before;
        assert!(
            added >= image.len() as u64 && added <= 2 * image.len() as u64 + (4 << 20),
            "segments grew by {added} bytes for a {} byte image",
            image.len()
        );
    });
}

/// radosgw killed (SIGKILL) in the middle of a PUT and started again: the
/// PUT fails (nothing acknowledged, nothing visible), everything
/// acknowledged before is intact, and the frontend recovers by itself.
#[test]
fn radosgw_killed_mid_put() {
    let _g = GATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ceph = strato_testbed::shared_ceph();
    let pg = strato_testbed::shared_postgres();
    let url = pg.create_database(&format!("rgwkill_{:08x}", rand::random::<u32>()));
    let bucket = new_bucket("rgwkill");
    let f = frontend(&bucket, Some(&url));
    let c = f.client();
    rt().block_on(async {
        c.create_bucket().bucket("images").send().await.unwrap();
        let before = common::random_bytes(8 << 20, 31);
        put(&c, "images", "before", &before).await;

        let big = common::random_bytes(96 << 20, 32);
        let task = {
            let c = c.clone();
            let big = big.clone();
            tokio::spawn(async move {
                c.put_object()
                    .bucket("images")
                    .key("during")
                    .body(ByteStream::from(big))
                    .send()
                    .await
            })
        };
        // Kill it once the first segment uploads are under way.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        ceph.kill_rgw();
        let r = task.await.unwrap();
        ceph.start_rgw();
        match &r {
            // Finished before the kill landed: then it must be whole.
            Ok(_) => assert!(get(&c, "images", "during", None).await == big),
            Err(e) => {
                let st = e.raw_response().map(|r| r.status().as_u16());
                assert!(matches!(st, Some(500 | 503)), "{e:?}");
                let missing = c
                    .head_object()
                    .bucket("images")
                    .key("during")
                    .send()
                    .await
                    .unwrap_err();
                assert_eq!(
                    missing.raw_response().map(|r| r.status().as_u16()),
                    Some(404)
                );
            }
        }
        assert!(get(&c, "images", "before", None).await == before);
        put(&c, "images", "after", &big).await;
        assert!(get(&c, "images", "after", None).await == big);
        eprintln!(
            "radosgw killed mid-PUT: the PUT {}",
            if r.is_ok() {
                "had finished"
            } else {
                "failed cleanly"
            }
        );
    });
}

/// Bytes of segment objects strato wrote in the radosgw bucket.
async fn segment_bytes(bucket: &str) -> u64 {
    let c = strato_testbed::shared_ceph().s3_client();
    let mut total = 0u64;
    let mut token = None;
    for _ in 0..1000 {
        let r = c
            .list_objects_v2()
            .bucket(bucket)
            .prefix("strato/segments/")
            .set_continuation_token(token.take())
            .send()
            .await
            .unwrap();
        total += r
            .contents()
            .iter()
            .filter_map(aws_sdk_s3::types::Object::size)
            .map(|s| u64::try_from(s).unwrap())
            .sum::<u64>();
        match r.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    total
}

/// `strato gc` run again and again from an operator's shell while a
/// frontend keeps ingesting new data and copies of earlier data (dedup
/// hits): no acknowledged object is lost, fsck is clean afterwards.
#[test]
fn gc_racing_ingest_and_dedup_hits_loses_nothing() {
    let _g = GATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pg = strato_testbed::shared_postgres();
    let url = pg.create_database(&format!("gcrace_{:08x}", rand::random::<u32>()));
    let bucket = new_bucket("gcrace");
    let f = frontend(&bucket, Some(&url));
    let c = f.client();
    let ceph = strato_testbed::shared_ceph();
    let env = vec![
        ("STRATO_STORAGE_BACKEND", "s3".to_string()),
        ("STRATO_S3_ENDPOINT", ceph.endpoint()),
        ("STRATO_S3_BUCKET", bucket.clone()),
        ("STRATO_S3_PREFIX", "strato".to_string()),
        ("STRATO_S3_ACCESS_KEY", ceph.access_key().to_string()),
        ("STRATO_S3_SECRET_KEY", ceph.secret_key().to_string()),
        ("STRATO_META_URL", url.clone()),
        ("STRATO_CACHE_BYTES", "0".to_string()),
    ];
    let admin = {
        let env = env.clone();
        move |args: &[&str]| {
            let scratch = common::Strato::new("postgres");
            std::fs::create_dir_all(scratch.dir.path()).unwrap();
            let mut cmd = scratch.cmd();
            cmd.args(args);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd.output().unwrap()
        }
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_runs = {
        let stop = stop.clone();
        let admin = admin.clone();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            // Bounded: at most 40 runs.
            for _ in 0..40 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let out = admin(&["gc", "--grace", "1s"]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                said.push(String::from_utf8_lossy(&out.stdout).to_string());
            }
            said
        })
    };
    let mut acked: Vec<(String, u64)> = Vec::new();
    rt().block_on(async {
        c.create_bucket().bucket("images").send().await.unwrap();
        for round in 0..16u64 {
            let seed = 500 + round;
            let data = common::random_bytes(3 << 20, seed);
            let key = format!("new-{round}");
            put(&c, "images", &key, &data).await;
            acked.push((key, seed));
            // A copy of an earlier object: every chunk a dedup hit.
            let (_, old) = acked[usize::try_from(round / 2).unwrap()].clone();
            let key = format!("copy-{round}");
            put(&c, "images", &key, &common::random_bytes(3 << 20, old)).await;
            acked.push((key, old));
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Release);
    let said = gc_runs.join().unwrap();
    assert!(said.len() >= 2, "gc ran {} times", said.len());
    let out = admin(&["gc", "--grace", "1s"]);
    assert!(out.status.success());
    // Read back with a cold cache through a second frontend.
    let cold = Frontend::start("postgres", &env);
    let cc = cold.client();
    rt().block_on(async {
        for (key, seed) in &acked {
            assert!(
                get(&cc, "images", key, None).await == common::random_bytes(3 << 20, *seed),
                "{key} after {} gc runs",
                said.len()
            );
        }
    });
    let out = admin(&["fsck"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
