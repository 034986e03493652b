//! The s3 segment backend against a real radosgw (the testbed's Ceph):
//! a store opened with `Storage::S3` and the redb metadata engine.
//!
//! Tests share one Ceph cluster; the one that stops radosgw takes the gate
//! exclusively so the others never see it down.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::Cursor;
use std::path::Path;

use parking_lot::RwLock;
use rand::{Rng, SeedableRng};
use strato_store::{
    GcOptions, Precondition, S3Settings, Storage, Store, StoreConfig, StoreError, Target,
};

static GATE: RwLock<()> = RwLock::new(());

fn bucket(tag: &str) -> String {
    let name = format!("{tag}-{:08x}", rand::random::<u32>());
    strato_testbed::shared_ceph().create_bucket(&name);
    name
}

fn settings(bucket: &str, cache_bytes: u64) -> S3Settings {
    let ceph = strato_testbed::shared_ceph();
    S3Settings {
        endpoint: ceph.endpoint(),
        bucket: bucket.into(),
        prefix: "repo".into(),
        access_key: Some(ceph.access_key().into()),
        secret_key: Some(ceph.secret_key().into()),
        cache_bytes,
        part_size: 5 << 20,
        upload_concurrency: 3,
        max_attempts: 3,
        ..Default::default()
    }
}

fn open(dir: &Path, s: &S3Settings) -> Result<Store, StoreError> {
    Store::open(
        dir,
        StoreConfig {
            segment_size: 12 << 20,
            min_part_size: 1 << 20,
            storage: Storage::S3(Box::new(s.clone())),
            ..Default::default()
        },
    )
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn put(s: &Store, b: &str, k: &str, data: &[u8]) -> Result<strato_store::Committed, StoreError> {
    s.put_reader(
        b,
        k,
        Cursor::new(data.to_vec()),
        "cdc".parse().unwrap(),
        vec![],
        |_| {},
    )
}

fn get(s: &Store, b: &str, k: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in s.read(b, k, range).unwrap() {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

fn objects(s: &Store) -> Vec<(String, u64)> {
    s.segment_objects().unwrap()
}

#[test]
fn put_get_range_multipart_delete_and_reopen() {
    let _g = GATE.read();
    let b = bucket("basic");
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(&b, 64 << 20);
    let store = open(dir.path(), &cfg).unwrap();
    assert!(store.storage_description().contains(&b));
    store.create_bucket("img", "admin").unwrap();

    // 30 MiB: the stream rolls to a second segment after 12 MiB, and a
    // segment above the 5 MiB part size goes up as a multipart upload.
    let big = random(30 << 20, 1);
    let c = put(&store, "img", "big", &big).unwrap();
    assert_eq!(c.new_bytes, big.len() as u64);
    let segs = objects(&store);
    assert!(segs.len() >= 2, "{segs:?}");
    assert!(segs.iter().all(|(k, _)| k.starts_with("repo/segments/")));
    assert!(segs.iter().any(|(_, n)| *n > 5 << 20), "{segs:?}");
    let total: u64 = segs.iter().map(|(_, n)| n).sum();
    assert!(total > big.len() as u64 && total < big.len() as u64 + (1 << 20));
    // No staging file outlives its upload.
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count(),
        0
    );

    assert!(get(&store, "img", "big", None) == big);
    let r = 7_000_001u64..19_500_000;
    assert!(get(&store, "img", "big", Some(r.clone())) == big[r.start as usize..r.end as usize]);
    // The second full read comes from the local cache.
    let before = store.read_cache_stats();
    assert!(get(&store, "img", "big", None) == big);
    let after = store.read_cache_stats();
    assert!(after.hits > before.hits, "{before:?} {after:?}");
    assert!(after.bytes <= 64 << 20);

    // Multipart through the store API (parts of 1 MiB minimum here).
    let p1 = random(3 << 20, 2);
    let p2 = random(1 << 20, 3);
    let up = store
        .create_upload("img", "mp", vec![], "cdc".parse().unwrap())
        .unwrap();
    let mut etags = Vec::new();
    for (n, data) in [(1u32, &p1), (2, &p2)] {
        let mut w = store
            .writer(
                Target::Part {
                    upload_id: up.clone(),
                    part: n,
                },
                "cdc".parse().unwrap(),
            )
            .unwrap();
        w.write(bytes::Bytes::from(data.clone())).unwrap();
        etags.push((n, w.finish(vec![], None).unwrap().etag));
    }
    store
        .complete_upload(&up, &etags, &Precondition::None)
        .unwrap();
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    assert!(get(&store, "img", "mp", None) == whole);

    store.delete_object("img", "mp").unwrap();
    assert!(matches!(
        store.head("img", "mp"),
        Err(StoreError::NoSuchKey { .. })
    ));

    // GC finds nothing to reclaim: every segment object is referenced.
    let r = store.gc(&GcOptions::default()).unwrap();
    let sg = r.shared.unwrap();
    assert_eq!((sg.orphans_deleted, sg.orphans_waiting), (0, 0), "{sg:?}");
    assert_eq!(sg.segment_objects, objects(&store).len());
    // fsck re-reads every located record: clean.
    let f = store.fsck().unwrap();
    assert!(f.is_clean(), "{:?}", f.problems);
    assert_eq!(f.segments, objects(&store).len());
    assert!(f.chunks_checked > 0 && f.bytes_checked >= big.len() as u64);

    // Reopen with a cold, empty cache: the data comes back from radosgw.
    drop(store);
    let cold = S3Settings {
        cache_bytes: 0,
        ..cfg.clone()
    };
    let store = open(dir.path(), &cold).unwrap();
    assert!(get(&store, "img", "big", None) == big);
    assert_eq!(store.read_cache_stats().hits, 0);
    drop(store);

    // The directory now belongs to the s3 backend: opening it as a local
    // store is refused rather than showing objects without data.
    let e = Store::open(dir.path(), StoreConfig::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("s3"), "{e}");
}

#[test]
fn second_put_of_the_same_data_uploads_nothing() {
    let _g = GATE.read();
    let b = bucket("dedup");
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &settings(&b, 0)).unwrap();
    store.create_bucket("img", "admin").unwrap();
    let data = random(9 << 20, 4);
    put(&store, "img", "a", &data).unwrap();
    let first = objects(&store);
    let again = put(&store, "img", "b", &data).unwrap();
    assert_eq!(again.new_bytes, 0);
    assert_eq!(objects(&store), first, "no new segment object");
    // Also across a reopen: the chunk index is in the metadata store, not
    // in this process.
    drop(store);
    let store = open(dir.path(), &settings(&b, 0)).unwrap();
    let third = put(&store, "img", "c", &data).unwrap();
    assert_eq!(third.new_bytes, 0);
    assert_eq!(objects(&store), first);
    assert!(get(&store, "img", "c", None) == data);
    // Chunks sent by id (chunk API, pulls) dedup the same way.
    let chunk = random(70_000, 5);
    let id = strato_store::ChunkId::of(&chunk);
    assert!(store.put_chunk(&id, &chunk).unwrap());
    assert!(!store.put_chunk(&id, &chunk).unwrap());
    assert!(store.has_chunk(&id));
    assert_eq!(&store.read_chunk(&id).unwrap()[..], &chunk[..]);
    assert_eq!(objects(&store).len(), first.len() + 1);
}

#[test]
fn missing_segment_object_fails_the_get_naming_object_and_segment() {
    let _g = GATE.read();
    let b = bucket("missing");
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &settings(&b, 0)).unwrap();
    store.create_bucket("img", "admin").unwrap();
    let data = random(2 << 20, 6);
    put(&store, "img", "victim", &data).unwrap();
    let segs = objects(&store);
    assert_eq!(segs.len(), 1);
    let client = strato_testbed::shared_ceph().s3_client();
    let key = segs[0].0.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A corrupt segment object (one byte flipped in the middle, written
    // behind strato's back): fsck names the chunk, the object and who uses it.
    let mut bytes = rt
        .block_on(async {
            let o = client.get_object().bucket(&b).key(&key).send().await?;
            Ok::<_, Box<dyn std::error::Error>>(o.body.collect().await?.into_bytes().to_vec())
        })
        .unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    rt.block_on(
        client
            .put_object()
            .bucket(&b)
            .key(&key)
            .body(bytes.into())
            .send(),
    )
    .unwrap();
    let f = store.fsck().unwrap();
    let problems: Vec<String> = f.problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&key) && problems[0].contains("img/victim"),
        "{problems:?}"
    );

    rt.block_on(client.delete_object().bucket(&b).key(&key).send())
        .unwrap();
    let err = store
        .read("img", "victim", None)
        .unwrap()
        .find_map(Result::err)
        .expect("the read fails");
    let msg = err.to_string();
    assert!(msg.contains("img/victim"), "{msg}");
    assert!(msg.contains(&key), "{msg}");
    // fsck says which object is gone and how many chunks it held.
    let f = store.fsck().unwrap();
    let problems: Vec<String> = f.problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(&key) && problems[0].contains("missing"),
        "{problems:?}"
    );
    // Other objects are unaffected.
    let other = random(1 << 20, 7);
    put(&store, "img", "other", &other).unwrap();
    assert!(get(&store, "img", "other", None) == other);
}

#[test]
fn radosgw_down_is_a_clear_error_nothing_committed_and_recovers() {
    let _g = GATE.write();
    let ceph = strato_testbed::shared_ceph();
    let b = bucket("outage");
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &settings(&b, 0)).unwrap();
    store.create_bucket("img", "admin").unwrap();
    let before = random(1 << 20, 8);
    put(&store, "img", "before", &before).unwrap();
    let segs = objects(&store);

    ceph.stop_rgw();
    let t = std::time::Instant::now();
    let data = random(3 << 20, 9);
    let err = put(&store, "img", "during", &data).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::Unavailable { .. }) && msg.contains(&ceph.endpoint()),
        "{msg}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        t.elapsed()
    );
    assert!(matches!(
        store.head("img", "during"),
        Err(StoreError::NoSuchKey { .. })
    ));
    let read_err = store
        .read("img", "before", None)
        .unwrap()
        .find_map(Result::err)
        .expect("reads fail too");
    assert!(
        matches!(read_err, StoreError::Unavailable { .. }),
        "{read_err}"
    );
    ceph.start_rgw();

    assert!(get(&store, "img", "before", None) == before);
    // The failed PUT left nothing the retry could trip on.
    let c = put(&store, "img", "during", &data).unwrap();
    assert_eq!(c.new_bytes, data.len() as u64);
    assert!(get(&store, "img", "during", None) == data);
    assert_eq!(objects(&store).len(), segs.len() + 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn wrong_bucket_or_keys_fail_the_open() {
    let _g = GATE.read();
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path(), &settings("no-such-bucket-strato", 0))
        .err()
        .expect("refused");
    assert!(e.to_string().contains("no-such-bucket-strato"), "{e}");
    let b = bucket("keys");
    let bad = S3Settings {
        secret_key: Some("wrong".into()),
        ..settings(&b, 0)
    };
    let dir = tempfile::tempdir().unwrap();
    assert!(open(dir.path(), &bad).is_err());
}

fn writer(s: &Store, b: &str, k: &str) -> strato_store::ObjectWriter {
    s.writer(
        Target::Object {
            bucket: b.into(),
            key: k.into(),
            precondition: Precondition::None,
        },
        "cdc".parse().unwrap(),
    )
    .unwrap()
}

/// Shared-mode GC: segment objects of a write abandoned before its commit
/// are reclaimed once older than the grace period; a write whose
/// registration is fresh keeps its segments and commits; a write that
/// stalled past the grace period loses its segments to GC and its commit
/// then fails (nothing acknowledged), never referencing a deleted object.
#[test]
fn gc_reclaims_orphans_and_never_a_live_write() {
    let _g = GATE.read();
    let b = bucket("gc");
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(&b, 64 << 20);
    let store = open(dir.path(), &cfg).unwrap();
    store.create_bucket("img", "me").unwrap();
    let keep = random(20 << 20, 40);
    put(&store, "img", "keep", &keep).unwrap();
    let kept: Vec<String> = objects(&store).into_iter().map(|(k, _)| k).collect();

    // Abandoned mid-stream (a client gone, a frontend dying): its uploaded
    // segments are orphans, their registrations dropped.
    let mut dead = writer(&store, "img", "dead");
    dead.write(bytes::Bytes::from(random(30 << 20, 41)))
        .unwrap();
    drop(dead);
    // Stalled: uploaded two segments, commits only after GC ran.
    let mut stalled = writer(&store, "img", "stalled");
    stalled
        .write(bytes::Bytes::from(random(30 << 20, 42)))
        .unwrap();
    // (Uploads run behind the writer: more objects may appear meanwhile.)
    let with_orphans = objects(&store);
    assert!(with_orphans.len() >= kept.len() + 2, "{with_orphans:?}");

    // Within the grace period nothing goes.
    let r = store.gc(&GcOptions::default()).unwrap();
    let sg = r.shared.unwrap();
    assert_eq!(sg.orphans_deleted, 0, "{sg:?}");
    assert!(sg.orphans_waiting >= 2, "{sg:?}");
    let after = objects(&store);
    assert!(with_orphans.iter().all(|o| after.contains(o)));

    // Past the grace period the orphans and the stalled write's segments
    // go, while a write started just now keeps its segments and commits.
    std::thread::sleep(std::time::Duration::from_millis(4500));
    let before_fresh = objects(&store);
    let fresh_data = random(30 << 20, 43);
    let mut fresh = writer(&store, "img", "fresh");
    fresh.write(bytes::Bytes::from(fresh_data.clone())).unwrap();
    // Its first sealed segment is uploaded behind the writer: wait until
    // radosgw lists it (bounded), so GC does see it.
    for _ in 0..100 {
        if objects(&store).iter().any(|o| !before_fresh.contains(o)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(objects(&store).iter().any(|o| !before_fresh.contains(o)));
    let short = GcOptions {
        grace: std::time::Duration::from_secs(4),
        ..GcOptions::default()
    };
    let r = store.gc(&short).unwrap();
    let sg = r.shared.clone().unwrap();
    assert!(sg.orphans_deleted >= 3, "{sg:?}");
    assert!(
        sg.orphans_waiting >= 1,
        "the fresh write's segments: {sg:?}"
    );
    assert!(r.bytes_freed_on_disk >= 30 << 20, "{r:?}");
    let e = stalled.finish(vec![], None).unwrap_err();
    assert!(e.to_string().contains("reclaimed by GC"), "{e}");
    assert!(matches!(
        store.head("img", "stalled"),
        Err(StoreError::NoSuchKey { .. })
    ));
    fresh.finish(vec![], None).unwrap();
    assert!(get(&store, "img", "fresh", None) == fresh_data);

    // What is left is exactly what is referenced, and reads back from
    // radosgw with a cold cache.
    let r = store.gc(&short).unwrap();
    assert_eq!(r.shared.unwrap().orphans_deleted, 0);
    drop(store);
    let cold = open(
        dir.path(),
        &S3Settings {
            cache_bytes: 0,
            ..cfg
        },
    )
    .unwrap();
    assert!(get(&cold, "img", "keep", None) == keep);
    assert!(get(&cold, "img", "fresh", None) == fresh_data);
    let f = cold.fsck().unwrap();
    assert!(f.is_clean(), "fsck after GC: {:?}", f.problems);
    for k in kept {
        assert!(
            objects(&cold).iter().any(|(o, _)| *o == k),
            "{k} was deleted"
        );
    }
}
