//! Store behaviour, run against both metadata engines.

use std::io::Cursor;

use rand::{Rng, SeedableRng};

use super::*;

fn engines() -> [Engine; 2] {
    [Engine::Redb, Engine::Sled]
}

fn open(dir: &Path, engine: Engine) -> Store {
    Store::open(
        dir,
        StoreConfig {
            engine,
            min_part_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap()
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn put(s: &Store, b: &str, k: &str, data: &[u8], chunking: &str) -> Committed {
    s.put_reader(
        b,
        k,
        Cursor::new(data),
        chunking.parse().unwrap(),
        vec![],
        |_| {},
    )
    .unwrap()
}

fn get(s: &Store, b: &str, k: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in s.read(b, k, range).unwrap() {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

fn md5_hex(d: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(d))
}

#[test]
fn round_trips_every_size_and_profile() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), engine);
        s.create_bucket("bkt", "me").unwrap();
        let sizes = [
            0usize,
            1,
            4095,
            4096,
            4097,
            65535,
            65536,
            65537,
            262_145,
            3 << 20,
        ];
        for chunking in ["auto", "block", "cdc", "fixed:4096", "fixed:65536"] {
            for (i, n) in sizes.iter().enumerate() {
                let data = random(*n, i as u64);
                let key = format!("{chunking}/{n}");
                let c = put(&s, "bkt", &key, &data, chunking);
                assert_eq!(c.etag, md5_hex(&data));
                assert_eq!(
                    get(&s, "bkt", &key, None),
                    data,
                    "{engine:?} {chunking} {n}"
                );
            }
        }
        // sparse image: zeros are not stored
        let mut sparse = vec![0u8; 8 << 20];
        sparse[3 << 20..(3 << 20) + 10_000].copy_from_slice(&random(10_000, 9));
        let c = put(&s, "bkt", "sparse.img", &sparse, "auto");
        assert!(
            c.new_bytes < 64 << 10,
            "stored {} bytes of a sparse image",
            c.new_bytes
        );
        assert_eq!(get(&s, "bkt", "sparse.img", None), sparse);
        assert!(s.fsck().unwrap().is_clean());
    }
}

#[test]
fn ranged_reads_at_chunk_edges() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Engine::Redb);
    s.create_bucket("bkt", "me").unwrap();
    let data = random(1 << 20, 7);
    put(&s, "bkt", "o", &data, "fixed:4096");
    for (a, b) in [
        (0, 1),
        (4095, 4097),
        (4096, 8192),
        (100, 1 << 20),
        ((1 << 20) - 1, 1 << 20),
        (5, 5),
    ] {
        assert_eq!(
            get(&s, "bkt", "o", Some(a..b)),
            &data[a as usize..b as usize]
        );
    }
    assert!(matches!(
        s.read("bkt", "o", Some(10..(1 << 20) + 1)),
        Err(StoreError::InvalidRange { .. })
    ));
}

#[test]
fn identical_data_is_stored_once() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), engine);
        s.create_bucket("bkt", "me").unwrap();
        let data = random(16 << 20, 1);
        let a = put(&s, "bkt", "a", &data, "cdc");
        let b = put(&s, "bkt", "b", &data, "cdc");
        assert_eq!(a.new_bytes, data.len() as u64);
        assert_eq!(b.new_bytes, 0);
        let mut changed = data.clone();
        changed[8 << 20..(8 << 20) + 4096].copy_from_slice(&random(4096, 2));
        let c = put(&s, "bkt", "c", &changed, "cdc");
        assert!(
            c.new_bytes < 1 << 20,
            "{} new bytes for a 4 KiB change",
            c.new_bytes
        );
        let st = s.stats().unwrap();
        assert_eq!(st.objects, 3);
        assert!(st.dedup_ratio > 2.8);
    }
}

#[test]
fn bad_names_and_missing_things() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Engine::Redb);
    assert!(matches!(
        s.create_bucket("Bad_Name", "me"),
        Err(StoreError::InvalidBucketName { .. })
    ));
    s.create_bucket("bkt", "me").unwrap();
    assert!(matches!(
        s.create_bucket("bkt", "me"),
        Err(StoreError::BucketAlreadyOwnedByYou(_))
    ));
    assert!(matches!(
        s.create_bucket("bkt", "you"),
        Err(StoreError::BucketAlreadyExists(_))
    ));
    assert!(matches!(
        s.head("bkt", "nope"),
        Err(StoreError::NoSuchKey { .. })
    ));
    assert!(matches!(
        s.head("nobkt", "x"),
        Err(StoreError::NoSuchBucket(_))
    ));
    let long = "k".repeat(1025);
    assert!(matches!(
        s.writer(
            Target::Object {
                bucket: "bkt".into(),
                key: long,
                precondition: Precondition::None
            },
            ProfileChoice::Auto
        ),
        Err(StoreError::InvalidKey(_))
    ));
    put(&s, "bkt", "../../etc/passwd", b"just a key", "auto");
    assert_eq!(get(&s, "bkt", "../../etc/passwd", None), b"just a key");
    assert!(matches!(
        s.delete_bucket("bkt"),
        Err(StoreError::BucketNotEmpty(_))
    ));
    s.delete_object("bkt", "../../etc/passwd").unwrap();
    s.delete_bucket("bkt").unwrap();
    assert!(s.list_buckets().unwrap().is_empty());
}

#[test]
fn conditional_writes_and_bad_digest_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Engine::Redb);
    s.create_bucket("bkt", "me").unwrap();
    let first = put(&s, "bkt", "k", b"one", "auto");
    let write = |pre: Precondition, data: &[u8], md5: Option<[u8; 16]>| {
        let mut w = s
            .writer(
                Target::Object {
                    bucket: "bkt".into(),
                    key: "k".into(),
                    precondition: pre,
                },
                ProfileChoice::Auto,
            )
            .unwrap();
        w.write(Bytes::copy_from_slice(data)).unwrap();
        w.finish(vec![], md5)
    };
    assert!(matches!(
        write(Precondition::IfAbsent, b"two", None),
        Err(StoreError::PreconditionFailed)
    ));
    assert!(matches!(
        write(Precondition::IfMatch("abc".into()), b"two", None),
        Err(StoreError::PreconditionFailed)
    ));
    assert!(matches!(
        write(Precondition::None, b"two", Some([0; 16])),
        Err(StoreError::BadDigest)
    ));
    assert_eq!(get(&s, "bkt", "k", None), b"one");
    write(
        Precondition::IfMatch(format!("\"{}\"", first.etag)),
        b"two",
        None,
    )
    .unwrap();
    assert_eq!(get(&s, "bkt", "k", None), b"two");
    assert!(s.fsck().unwrap().is_clean());
}

#[test]
fn multipart_assembles_and_checks_parts() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), engine);
        s.create_bucket("bkt", "me").unwrap();
        let id = s
            .create_upload("bkt", "big", b"attrs".to_vec(), ProfileChoice::Auto)
            .unwrap();
        let parts: Vec<Vec<u8>> = (0..3)
            .map(|i| random(if i < 2 { 1 << 20 } else { 1000 }, i))
            .collect();
        let mut etags = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let mut w = s
                .writer(
                    Target::Part {
                        upload_id: id.clone(),
                        part: i as u32 + 1,
                    },
                    ProfileChoice::Auto,
                )
                .unwrap();
            w.write(Bytes::copy_from_slice(p)).unwrap();
            etags.push((i as u32 + 1, w.finish(vec![], None).unwrap().etag));
        }
        assert_eq!(s.list_parts(&id).unwrap().len(), 3);
        let wrong = vec![(1, etags[0].1.clone()), (2, "00".repeat(16))];
        assert!(matches!(
            s.complete_upload(&id, &wrong, &Precondition::None),
            Err(StoreError::InvalidPart(_))
        ));
        let unordered = vec![etags[1].clone(), etags[0].clone()];
        assert!(matches!(
            s.complete_upload(&id, &unordered, &Precondition::None),
            Err(StoreError::InvalidPartOrder)
        ));
        let small_first = [etags[2].clone()];
        let rec = s.complete_upload(
            &id,
            &small_first
                .iter()
                .map(|(_, e)| (3, e.clone()))
                .collect::<Vec<_>>(),
            &Precondition::None,
        );
        assert!(rec.is_ok(), "a single small part is fine");
        assert!(matches!(s.upload(&id), Err(StoreError::NoSuchUpload(_))));

        let id = s
            .create_upload("bkt", "big", vec![], ProfileChoice::Auto)
            .unwrap();
        for (i, p) in [random(1000, 1), random(1 << 20, 2)].iter().enumerate() {
            let mut w = s
                .writer(
                    Target::Part {
                        upload_id: id.clone(),
                        part: i as u32 + 1,
                    },
                    ProfileChoice::Auto,
                )
                .unwrap();
            w.write(Bytes::copy_from_slice(p)).unwrap();
            w.finish(vec![], None).unwrap();
        }
        let listed: Vec<(u32, String)> = s
            .list_parts(&id)
            .unwrap()
            .iter()
            .map(|(n, p)| (*n, hex::encode(p.md5)))
            .collect();
        assert!(matches!(
            s.complete_upload(&id, &listed, &Precondition::None),
            Err(StoreError::EntityTooSmall { .. })
        ));
        s.abort_upload(&id).unwrap();

        let id = s
            .create_upload("bkt", "big", vec![], ProfileChoice::Auto)
            .unwrap();
        for (i, p) in parts.iter().enumerate() {
            let mut w = s
                .writer(
                    Target::Part {
                        upload_id: id.clone(),
                        part: i as u32 + 1,
                    },
                    ProfileChoice::Auto,
                )
                .unwrap();
            w.write(Bytes::copy_from_slice(p)).unwrap();
            w.finish(vec![], None).unwrap();
        }
        let rec = s.complete_upload(&id, &etags, &Precondition::None).unwrap();
        assert!(rec.etag.ends_with("-3"));
        let whole: Vec<u8> = parts.concat();
        assert_eq!(get(&s, "bkt", "big", None), whole);
        let report = s
            .gc(&GcOptions {
                grace: Duration::ZERO,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(report.fixed_refs, 0);
        let f = s.fsck().unwrap();
        assert!(f.is_clean(), "{:?}", f.problems);
        assert_eq!(f.unreferenced_chunks, 0);
    }
}

#[test]
fn copy_shares_chunks_and_delete_releases_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Engine::Redb);
    s.create_bucket("bkt", "me").unwrap();
    let data = random(4 << 20, 3);
    put(&s, "bkt", "src", &data, "auto");
    let before = s.stats().unwrap().stored_bytes;
    s.copy_object(("bkt", "src"), ("bkt", "dst"), None, &Precondition::None)
        .unwrap();
    assert_eq!(s.stats().unwrap().stored_bytes, before);
    s.delete_object("bkt", "src").unwrap();
    assert_eq!(get(&s, "bkt", "dst", None), data);
    s.delete_object("bkt", "dst").unwrap();
    let gc = s
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(gc.reclaimed_bytes, data.len() as u64);
    assert!(gc.bytes_freed_on_disk >= data.len() as u64);
    assert_eq!(s.chunk_count(), 0);
    assert!(s.fsck().unwrap().is_clean());
}

#[test]
fn gc_waits_for_grace_and_keeps_pinned_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Engine::Redb);
    s.create_bucket("bkt", "me").unwrap();
    let data = random(2 << 20, 4);
    put(&s, "bkt", "a", &data, "cdc");
    s.delete_object("bkt", "a").unwrap();
    let plan = s.gc_plan(&GcOptions::default()).unwrap();
    assert_eq!(plan.reclaim_chunks, 0, "inside the grace period");
    assert!(plan.waiting_chunks > 0);
    // A writer in flight dedups against the dead chunks: GC must keep them.
    let mut w = s
        .writer(
            Target::Object {
                bucket: "bkt".into(),
                key: "b".into(),
                precondition: Precondition::None,
            },
            "cdc".parse().unwrap(),
        )
        .unwrap();
    w.write(Bytes::from(data.clone())).unwrap();
    let gc = s
        .gc(&GcOptions {
            grace: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    // Everything the writer has chunked so far is pinned; only the tail still
    // in its chunker's buffer (at most one chunk) is not, and may go.
    assert!(gc.reclaimed_chunks <= 1, "pinned chunks were reclaimed");
    let c = w.finish(vec![], None).unwrap();
    assert_eq!(
        c.new_bytes, gc.reclaimed_bytes,
        "revived chunks are not rewritten"
    );
    assert_eq!(get(&s, "bkt", "b", None), data);
    s.gc(&GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(get(&s, "bkt", "b", None), data);
    assert!(s.fsck().unwrap().is_clean());
}

#[test]
fn corrupt_chunk_is_named_by_get_and_fsck() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let data = random(1 << 20, 5);
        {
            let s = open(dir.path(), engine);
            s.create_bucket("bkt", "me").unwrap();
            put(&s, "bkt", "victim", &data, "cdc");
            put(&s, "bkt", "other", &random(100_000, 6), "cdc");
        }
        // flip one byte in the middle of the first segment's data
        let seg = dir
            .path()
            .join("segments")
            .join(segment::segment_file_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[500_000] ^= 0x40;
        std::fs::write(&seg, bytes).unwrap();
        let s = open(dir.path(), engine);
        let err = s
            .read("bkt", "victim", None)
            .unwrap()
            .find_map(std::result::Result::err)
            .unwrap();
        match &err {
            StoreError::Integrity { object, .. } => assert_eq!(object, "bkt/victim"),
            other => panic!("expected an integrity error, got {other}"),
        }
        assert_eq!(get(&s, "bkt", "other", None).len(), 100_000);
        let report = s.fsck().unwrap();
        assert!(!report.is_clean());
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.to_string().contains("bkt/victim")),
            "{:?}",
            report.problems
        );
    }
}

#[test]
fn index_rebuilds_from_segments_without_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let data = random(3 << 20, 8);
    let chunks;
    {
        let s = open(dir.path(), Engine::Redb);
        s.create_bucket("bkt", "me").unwrap();
        put(&s, "bkt", "a", &data, "cdc");
        chunks = s.chunk_count();
    }
    std::fs::remove_file(dir.path().join("meta.redb")).unwrap();
    let (s, report) = Store::open_with_report(dir.path(), StoreConfig::default()).unwrap();
    assert_eq!(report.chunks, chunks);
    s.create_bucket("bkt", "me").unwrap();
    let again = put(&s, "bkt", "a", &data, "cdc");
    assert_eq!(
        again.new_bytes, 0,
        "every chunk found through the rebuilt index"
    );
    assert_eq!(get(&s, "bkt", "a", None), data);
}

#[test]
fn second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(dir.path(), Engine::Redb);
    assert!(matches!(
        Store::open(dir.path(), StoreConfig::default()),
        Err(StoreError::Locked(_))
    ));
}

#[test]
fn concurrent_writers_and_gc_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Engine::Redb);
    s.create_bucket("bkt", "me").unwrap();
    let base = random(4 << 20, 10);
    std::thread::scope(|scope| {
        for t in 0..3u64 {
            let s = s.clone();
            let base = base.clone();
            scope.spawn(move || {
                for i in 0..6u64 {
                    let key = format!("t{t}/{i}");
                    let mut d = base.clone();
                    d[(i as usize) * 100_000] ^= t as u8 + 1;
                    put(&s, "bkt", &key, &d, "cdc");
                    if i % 2 == 0 {
                        s.delete_object("bkt", &key).unwrap();
                    }
                }
            });
        }
        let s = s.clone();
        scope.spawn(move || {
            for _ in 0..10 {
                s.gc(&GcOptions {
                    grace: Duration::ZERO,
                    dead_ratio: 0.01,
                    ..Default::default()
                })
                .unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    });
    for t in 0..3u64 {
        for i in (1..6u64).step_by(2) {
            let mut d = base.clone();
            d[(i as usize) * 100_000] ^= t as u8 + 1;
            assert_eq!(get(&s, "bkt", &format!("t{t}/{i}"), None), d);
        }
    }
    s.gc(&GcOptions {
        grace: Duration::ZERO,
        dead_ratio: 0.01,
        ..Default::default()
    })
    .unwrap();
    let f = s.fsck().unwrap();
    assert!(f.is_clean(), "{:?}", f.problems);
}

#[test]
fn chunks_by_id_and_manifest_commit() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), engine);
        s.create_bucket("bkt", "me").unwrap();
        let a = random(10_000, 1);
        let b = random(5_000, 2);
        let (ia, ib) = (ChunkId::of(&a), ChunkId::of(&b));
        assert!(matches!(
            s.put_chunk(&ia, &b),
            Err(StoreError::Integrity { .. })
        ));
        assert!(!s.has_chunk(&ia));
        assert!(s.put_chunk(&ia, &a).unwrap());
        assert!(!s.put_chunk(&ia, &a).unwrap(), "second put is a no-op");
        let chunks = vec![
            ManifestEntry {
                id: ia,
                len: 10_000,
            },
            ManifestEntry {
                id: ChunkId::ZERO_RUN,
                len: 4096,
            },
            ManifestEntry { id: ib, len: 5_000 },
        ];
        let rec = ObjectRecord {
            size: 19_096,
            etag: "x".into(),
            modified_ms: 0,
            profile: "fixed:4096".into(),
            attrs: vec![],
            parts: 0,
        };
        assert!(matches!(
            s.commit_manifest("bkt", "o", rec.clone(), &chunks, &Precondition::None),
            Err(StoreError::MissingChunk(id)) if id == ib
        ));
        assert!(matches!(
            s.head("bkt", "o"),
            Err(StoreError::NoSuchKey { .. })
        ));
        s.put_chunk(&ib, &b).unwrap();
        s.commit_manifest("bkt", "o", rec, &chunks, &Precondition::None)
            .unwrap();
        let mut want = a.clone();
        want.extend_from_slice(&[0u8; 4096]);
        want.extend_from_slice(&b);
        assert_eq!(get(&s, "bkt", "o", None), want);
        assert_eq!(&s.read_chunk(&ib).unwrap()[..], &b[..]);
        assert!(s.fsck().unwrap().is_clean());
    }
}

#[test]
fn damaged_reference_counts_are_reported_then_repaired() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), engine);
        s.create_bucket("bkt", "me").unwrap();
        let data = random(1 << 20, 11);
        put(&s, "bkt", "a", &data, "cdc");
        let (_, chunks) = s.manifest("bkt", "a").unwrap();
        let victim = chunks[0];
        // A recorded count that disagrees with the manifests, and a
        // referenced chunk whose state is missing altogether.
        s.inner()
            .meta
            .write(&mut |tx| {
                let bogus = model::ChunkState {
                    refs: 7,
                    len: victim.len,
                    zero_since_ms: 0,
                };
                tx.put(meta::Table::Chunks, &victim.id.0, &model::encode(&bogus)?)?;
                tx.delete(meta::Table::Chunks, &chunks[1].id.0)
            })
            .unwrap();
        let report = s.fsck().unwrap();
        let mismatches = report
            .problems
            .iter()
            .filter(|p| matches!(p, FsckProblem::RefCountMismatch { .. }))
            .count();
        assert_eq!(mismatches, 2, "{:?}", report.problems);
        let plan = s.gc_plan(&GcOptions::default()).unwrap();
        assert_eq!(plan.ref_fixes.len(), 2);
        let done = s.gc(&GcOptions::default()).unwrap();
        assert_eq!(done.fixed_refs, 2);
        assert!(s.fsck().unwrap().is_clean());
        assert_eq!(get(&s, "bkt", "a", None), data);
    }
}

#[test]
fn block_index_resolves_aligned_blocks_of_indexed_buckets() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), engine);
        s.create_bucket("plain", "me").unwrap();
        s.create_bucket("img", "me").unwrap();
        // 1 MiB of data with a zero block in it.
        let mut data = random(1 << 20, 21);
        data[8192..12288].fill(0);
        let block = |n: usize| &data[n * 4096..(n + 1) * 4096];
        let id5 = ChunkId::of(block(5));

        put(&s, "plain", "a", &data, "block:16384");
        assert!(!s.has_content(&id5), "a bucket without the index");
        assert!(matches!(
            s.read_content(&id5),
            Err(StoreError::MissingChunk(_))
        ));

        // Turning the index on indexes what is there already.
        let r = s.set_block_index("img", true).unwrap();
        assert_eq!(r.indexed, 0);
        let r2 = s.set_block_index("plain", true).unwrap();
        assert_eq!(r2.indexed, 255, "every non-zero block");
        assert_eq!(r2.zero, 1);
        assert_eq!(r2.straddling, 0, "block-aligned chunking cuts no block");
        assert!(s.has_content(&id5));
        assert_eq!(&s.read_content(&id5).unwrap()[..], block(5));
        s.set_block_index("plain", false).unwrap();

        // New writes into an indexed bucket are indexed; FastCDC leaves
        // blocks across chunk boundaries out.
        let other = random(1 << 20, 22);
        put(&s, "img", "b", &other, "cdc:4096:8192:16384");
        let oid = ChunkId::of(&other[40960..45056]);
        let r = s.index_object_blocks("img", "b").unwrap();
        assert_eq!(r.indexed + r.straddling + r.zero, 256);
        assert!(r.straddling > 0);
        assert!(r.indexed > 100);
        if s.has_content(&oid) {
            assert_eq!(&s.read_content(&oid).unwrap()[..], &other[40960..45056]);
        }
        // Multipart objects and copies are indexed as well.
        s.copy_object(("plain", "a"), ("img", "c"), None, &Precondition::None)
            .unwrap();
        let before = s.block_index_len().unwrap();

        // Deleting every object holding the blocks and collecting garbage
        // drops the entries: the index never outlives its chunks.
        s.delete_object("plain", "a").unwrap();
        s.delete_object("img", "c").unwrap();
        let gc = s
            .gc(&GcOptions {
                grace: Duration::ZERO,
                ..Default::default()
            })
            .unwrap();
        // (A block that is a whole chunk by itself needs no entry.)
        assert!(
            gc.block_entries_dropped >= 250,
            "{}",
            gc.block_entries_dropped
        );
        assert!(s.block_index_len().unwrap() < before);
        assert!(!s.has_content(&id5));
        assert!(s.fsck().unwrap().is_clean());
        // Bucket options go with the bucket.
        s.delete_object("img", "b").unwrap();
        s.delete_bucket("img").unwrap();
        s.create_bucket("img", "me").unwrap();
        assert!(!s.bucket_options("img").unwrap().block_index);
    }
}
