//! The store's own behaviour (put/get, multipart, conditional writes, delete
//! and GC, concurrent writers) with its metadata in PostgreSQL: the subset of
//! store/src/tests.rs that exercises the metadata engine hardest, on a fresh
//! database each.

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use crate::meta::tests::fresh_url;
use crate::{
    Engine, GcOptions, Precondition, ProfileChoice, Store, StoreConfig, StoreError, Target,
};

fn open(dir: &Path, url: &str) -> Store {
    Store::open(
        dir,
        StoreConfig {
            engine: Engine::Postgres,
            meta_url: Some(url.to_string()),
            min_part_size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap()
}

fn fresh(dir: &Path) -> (Store, String) {
    let url = fresh_url(Engine::Postgres).unwrap();
    (open(dir, &url), url)
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

fn put(s: &Store, b: &str, k: &str, data: &[u8]) -> crate::Committed {
    s.put_reader(
        b,
        k,
        Cursor::new(data),
        "cdc".parse().unwrap(),
        vec![],
        |_| {},
    )
    .unwrap()
}

fn get(s: &Store, b: &str, k: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in s.read(b, k, None).unwrap() {
        out.extend_from_slice(&piece.unwrap());
    }
    out
}

fn gc_now(s: &Store) -> crate::GcReport {
    s.gc(&GcOptions {
        grace: Duration::ZERO,
        dead_ratio: 0.01,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn put_get_dedup_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (s, url) = fresh(dir.path());
    assert_eq!(s.engine(), "postgres");
    s.create_bucket("bkt", "me").unwrap();
    let data = random(3 << 20, 1);
    let c = put(&s, "bkt", "a", &data);
    assert_eq!(c.size, data.len() as u64);
    let again = put(&s, "bkt", "b", &data);
    assert_eq!(again.new_bytes, 0, "identical data is stored once");
    assert_eq!(get(&s, "bkt", "a"), data);
    assert!(matches!(
        s.create_bucket("bkt", "me"),
        Err(StoreError::BucketAlreadyOwnedByYou(_))
    ));
    drop(s);
    let s = open(dir.path(), &url);
    assert_eq!(get(&s, "bkt", "b"), data);
    assert!(s.fsck().unwrap().is_clean());
}

#[test]
fn the_format_marker_lives_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (s, url) = fresh(dir.path());
    drop(s);
    // A second frontend with an empty data directory finds the marker.
    let other = tempfile::tempdir().unwrap();
    drop(open(other.path(), &url));
    // A repository of another format is refused, and left as it was.
    let m = super::PostgresMeta::open(&url).unwrap();
    use super::MetaStore;
    m.write(&mut |tx| tx.put(super::Table::Misc, b"format", b"strato-store 99"))
        .unwrap();
    let third = tempfile::tempdir().unwrap();
    let err = Store::open(
        third.path(),
        StoreConfig {
            engine: Engine::Postgres,
            meta_url: Some(url.clone()),
            ..Default::default()
        },
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("strato-store 99"), "{err}");
    assert_eq!(
        m.get(super::Table::Misc, b"format").unwrap().as_deref(),
        Some(&b"strato-store 99"[..])
    );
}

#[test]
fn multipart_and_conditional_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _url) = fresh(dir.path());
    s.create_bucket("bkt", "me").unwrap();
    let id = s
        .create_upload("bkt", "big", vec![], ProfileChoice::Auto)
        .unwrap();
    let parts = [random(1 << 20, 2), random(1000, 3)];
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
    assert_eq!(s.list_parts(&id).unwrap().len(), 2);
    let unordered = vec![etags[1].clone(), etags[0].clone()];
    assert!(matches!(
        s.complete_upload(&id, &unordered, &Precondition::None),
        Err(StoreError::InvalidPartOrder)
    ));
    s.complete_upload(&id, &etags, &Precondition::None).unwrap();
    assert!(matches!(s.upload(&id), Err(StoreError::NoSuchUpload(_))));
    assert_eq!(
        get(&s, "bkt", "big"),
        [&parts[0][..], &parts[1][..]].concat()
    );

    // If-Match against the wrong ETag changes nothing.
    let before = s.head("bkt", "big").unwrap();
    let mut w = s
        .writer(
            Target::Object {
                bucket: "bkt".into(),
                key: "big".into(),
                precondition: Precondition::IfMatch("0".repeat(32)),
            },
            ProfileChoice::Auto,
        )
        .unwrap();
    w.write(Bytes::from_static(b"new")).unwrap();
    let r = w.finish(vec![], None);
    assert!(matches!(r, Err(StoreError::PreconditionFailed)), "{r:?}");
    assert_eq!(s.head("bkt", "big").unwrap().etag, before.etag);
}

#[test]
fn delete_then_gc_reclaims_and_fsck_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _url) = fresh(dir.path());
    s.create_bucket("bkt", "me").unwrap();
    let keep = random(1 << 20, 4);
    let drop_me = random(2 << 20, 5);
    put(&s, "bkt", "keep", &keep);
    put(&s, "bkt", "drop", &drop_me);
    s.delete_object("bkt", "drop").unwrap();
    let gc = gc_now(&s);
    assert!(
        gc.reclaimed_bytes >= drop_me.len() as u64,
        "{}",
        gc.reclaimed_bytes
    );
    assert_eq!(get(&s, "bkt", "keep"), keep);
    let f = s.fsck().unwrap();
    assert!(f.is_clean(), "{:?}", f.problems);
}

#[test]
fn concurrent_writers_and_gc_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _url) = fresh(dir.path());
    s.create_bucket("bkt", "me").unwrap();
    let base = random(1 << 20, 10);
    std::thread::scope(|scope| {
        for t in 0..3u64 {
            let s = s.clone();
            let base = base.clone();
            scope.spawn(move || {
                for i in 0..4u64 {
                    let key = format!("t{t}/{i}");
                    let mut d = base.clone();
                    d[(i as usize) * 100_000] ^= t as u8 + 1;
                    put(&s, "bkt", &key, &d);
                    if i % 2 == 0 {
                        s.delete_object("bkt", &key).unwrap();
                    }
                }
            });
        }
        let s = s.clone();
        scope.spawn(move || {
            for _ in 0..5 {
                gc_now(&s);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    });
    for t in 0..3u64 {
        for i in (1..4u64).step_by(2) {
            let mut d = base.clone();
            d[(i as usize) * 100_000] ^= t as u8 + 1;
            assert_eq!(get(&s, "bkt", &format!("t{t}/{i}")), d);
        }
    }
    gc_now(&s);
    let f = s.fsck().unwrap();
    assert!(f.is_clean(), "{:?}", f.problems);
}
