//! The Rust `aws-sdk-s3` against the real `strato serve` binary over the real
//! store: what the store adds to the S3 suite (`tests/s3_suite.rs`, which
//! runs the endpoint-level suite of `s3-compat/tests/s3/` here too) —
//! large and multipart transfers, chunk sharing and GC, config-file users,
//! the chunking header, races with bucket deletion, memory bounds — plus
//! bad input at store scale (each answered with the right S3 error and
//! nothing stored, checked by listing afterwards).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "common/sdk.rs"]
mod sdk;

use std::time::{Duration, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete, MetadataDirective,
    ObjectIdentifier,
};
use bytes::Bytes;
use common::*;
use sdk::*;

const MIB: usize = 1 << 20;

fn part(n: i32, etag: &str) -> CompletedPart {
    CompletedPart::builder().part_number(n).e_tag(etag).build()
}

fn quoted_md5(data: &[u8]) -> String {
    format!("\"{}\"", md5_hex(data))
}

async fn put(c: &aws_sdk_s3::Client, bucket: &str, key: &str, data: &[u8]) -> String {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(data.to_vec().into())
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned()
}

async fn get(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    body_bytes(c.get_object().bucket(bucket).key(key).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("images").send().await.unwrap();
    c.create_bucket().bucket("other").send().await.unwrap();
    // us-east-1 answers a repeated create of your own bucket with 200.
    c.create_bucket().bucket("images").send().await.unwrap();

    let lb = c.list_buckets().send().await.unwrap();
    let names: Vec<_> = lb.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["images", "other"]);
    assert!(lb.buckets().iter().all(|b| b.creation_date().is_some()));
    let owner = lb.owner().expect("ListBuckets names the owner");
    assert_eq!(owner.display_name(), Some("admin"));
    assert!(owner.id().is_some_and(|id| !id.is_empty()), "{owner:?}");

    c.head_bucket().bucket("images").send().await.unwrap();
    let e = c.head_bucket().bucket("nope").send().await.unwrap_err();
    assert_eq!(status(&e), Some(404));

    let loc = c
        .get_bucket_location()
        .bucket("images")
        .send()
        .await
        .unwrap();
    // us-east-1 is reported as an empty LocationConstraint.
    assert!(
        loc.location_constraint()
            .is_none_or(|l| l.as_str().is_empty() || l.as_str() == "us-east-1"),
        "{loc:?}"
    );
    let e = c
        .get_bucket_location()
        .bucket("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchBucket");

    put(&c, "images", "k", b"x").await;
    let e = c.delete_bucket().bucket("images").send().await.unwrap_err();
    assert_eq!(code(&e), "BucketNotEmpty");
    c.delete_object()
        .bucket("images")
        .key("k")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("images").send().await.unwrap();
    let e = c.head_bucket().bucket("images").send().await.unwrap_err();
    assert_eq!(status(&e), Some(404));
    let e = c.delete_bucket().bucket("images").send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchBucket");
    let lb = c.list_buckets().send().await.unwrap();
    let names: Vec<_> = lb.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_head_with_md5_and_default_crc32() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let data = random_bytes(3 * MIB + 5, 11);

    // Content-MD5 set by us; the SDK adds its default CRC32.
    let out = c
        .put_object()
        .bucket("bkt")
        .key("with-md5")
        .content_md5(md5_b64(&data))
        .body(data.clone().into())
        .send()
        .await
        .unwrap();
    assert_eq!(out.e_tag(), Some(quoted_md5(&data).as_str()));
    assert_eq!(out.checksum_crc32(), Some(crc32_b64(&data).as_str()));

    // A streaming body: the SDK sends it aws-chunked with a CRC32 trailer.
    let path = server.strato.dir.path().join("src.bin");
    std::fs::write(&path, &data).unwrap();
    let out = c
        .put_object()
        .bucket("bkt")
        .key("streamed")
        .body(ByteStream::from_path(&path).await.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(out.e_tag(), Some(quoted_md5(&data).as_str()));
    assert_eq!(out.checksum_crc32(), Some(crc32_b64(&data).as_str()));

    for key in ["with-md5", "streamed"] {
        let got = c
            .get_object()
            .bucket("bkt")
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        assert_eq!(got.checksum_crc32(), Some(crc32_b64(&data).as_str()));
        assert_eq!(got.content_length(), Some(data.len() as i64));
        assert_eq!(got.content_encoding(), None, "aws-chunked is not stored");
        assert!(
            body_bytes(got).await == data,
            "{key}: GET is byte-identical"
        );

        let head = c.head_object().bucket("bkt").key(key).send().await.unwrap();
        assert_eq!(head.e_tag(), Some(quoted_md5(&data).as_str()));
        assert_eq!(head.content_length(), Some(data.len() as i64));
        assert_eq!(head.accept_ranges(), Some("bytes"));
        assert!(head.last_modified().is_some());
    }

    // Other checksum algorithms are verified and returned too.
    use aws_sdk_s3::types::ChecksumAlgorithm as A;
    for a in [A::Crc32C, A::Crc64Nvme, A::Sha1, A::Sha256] {
        let key = format!("algo-{}", a.as_str());
        c.put_object()
            .bucket("bkt")
            .key(&key)
            .checksum_algorithm(a.clone())
            .body(data[..100_000].to_vec().into())
            .send()
            .await
            .unwrap();
        // The SDK validates the checksum it is given back while reading.
        let got = c
            .get_object()
            .bucket("bkt")
            .key(&key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        assert!(
            got.checksum_crc32_c().is_some()
                || got.checksum_crc64_nvme().is_some()
                || got.checksum_sha1().is_some()
                || got.checksum_sha256().is_some(),
            "{key}"
        );
        assert!(body_bytes(got).await == data[..100_000]);
    }

    let e = c
        .head_object()
        .bucket("bkt")
        .key("missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(404));
    let e = c
        .get_object()
        .bucket("bkt")
        .key("missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_match_the_source() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let data = random_bytes(5 * MIB + 17, 12);
    let size = data.len();
    put(&c, "bkt", "obj", &data).await;

    // (header, expected first byte, expected last byte)
    let cases: Vec<(String, usize, usize)> = vec![
        ("bytes=0-0".into(), 0, 0),
        ("bytes=5-1000".into(), 5, 1000),
        (
            format!("bytes={}-{}", MIB - 3, 3 * MIB + 5),
            MIB - 3,
            3 * MIB + 5,
        ),
        (
            format!("bytes={}-{}", size - 1, size - 1),
            size - 1,
            size - 1,
        ),
        (
            format!("bytes={}-{}", size - 10, size + 100),
            size - 10,
            size - 1,
        ),
        (format!("bytes={}-", 2 * MIB + 1), 2 * MIB + 1, size - 1),
        ("bytes=0-".into(), 0, size - 1),
        ("bytes=-1000".into(), size - 1000, size - 1),
        ("bytes=-1".into(), size - 1, size - 1),
        (format!("bytes=-{}", size + 50), 0, size - 1),
    ];
    for (range, a, b) in cases {
        let got = c
            .get_object()
            .bucket("bkt")
            .key("obj")
            .range(&range)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.content_range(),
            Some(format!("bytes {a}-{b}/{size}").as_str()),
            "{range}"
        );
        assert_eq!(got.content_length(), Some((b - a + 1) as i64), "{range}");
        assert!(
            got.checksum_crc32().is_none(),
            "no whole-object checksum on a 206"
        );
        let body = body_bytes(got).await;
        assert!(body == data[a..=b], "{range}: bytes differ from the source");
    }

    // Plain HTTP sees the 206 status itself.
    let url = c
        .get_object()
        .bucket("bkt")
        .key("obj")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let (st, h, body) = raw_request("GET", url.uri(), &[("range", "bytes=10-19")], vec![]).await;
    assert_eq!(st, 206);
    assert_eq!(h["content-range"], format!("bytes 10-19/{size}").as_str());
    assert_eq!(body, data[10..20]);

    for range in [
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 5, size + 10),
    ] {
        let e = c
            .get_object()
            .bucket("bkt")
            .key("obj")
            .range(&range)
            .send()
            .await
            .unwrap_err();
        assert_eq!(status(&e), Some(416), "{range}");
        assert_eq!(code(&e), "InvalidRange", "{range}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // PutObject's `expires` and GetObject's `expires()`
async fn metadata_round_trips() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let expires = DateTime::from_secs(2_000_000_000);
    c.put_object()
        .bucket("bkt")
        .key("img.qcow2")
        .body(b"qcow".to_vec().into())
        .metadata("owner", "alice")
        .metadata("release", "24.04")
        .content_type("application/x-qemu-disk")
        .content_disposition("attachment; filename=\"img.qcow2\"")
        .cache_control("max-age=3600")
        .expires(expires)
        .send()
        .await
        .unwrap();
    let head = c
        .head_object()
        .bucket("bkt")
        .key("img.qcow2")
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("bkt")
        .key("img.qcow2")
        .send()
        .await
        .unwrap();
    for (meta, ct, cd, cc, ex) in [
        (
            head.metadata().cloned(),
            head.content_type(),
            head.content_disposition(),
            head.cache_control(),
            head.expires_string(),
        ),
        (
            got.metadata().cloned(),
            got.content_type(),
            got.content_disposition(),
            got.cache_control(),
            got.expires_string(),
        ),
    ] {
        let meta = meta.unwrap_or_default();
        assert_eq!(meta.get("owner").map(String::as_str), Some("alice"));
        assert_eq!(meta.get("release").map(String::as_str), Some("24.04"));
        assert_eq!(ct, Some("application/x-qemu-disk"));
        assert_eq!(cd, Some("attachment; filename=\"img.qcow2\""));
        assert_eq!(cc, Some("max-age=3600"));
        assert_eq!(ex, Some("Wed, 18 May 2033 03:33:20 GMT"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_objects_and_versions() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    for k in ["a", "b", "c", "d"] {
        put(&c, "bkt", k, k.as_bytes()).await;
    }
    let v = c.list_object_versions().bucket("bkt").send().await.unwrap();
    let versions: Vec<_> = v
        .versions()
        .iter()
        .map(|o| (o.key().unwrap(), o.version_id().unwrap(), o.is_latest()))
        .collect();
    assert_eq!(
        versions,
        [
            ("a", "null", Some(true)),
            ("b", "null", Some(true)),
            ("c", "null", Some(true)),
            ("d", "null", Some(true)),
        ]
    );
    assert_eq!(v.versions()[0].e_tag(), Some(quoted_md5(b"a").as_str()));
    assert!(v.delete_markers().is_empty());

    c.delete_object()
        .bucket("bkt")
        .key("a")
        .version_id("null")
        .send()
        .await
        .unwrap();
    // Deleting what is not there succeeds, as in S3.
    c.delete_object()
        .bucket("bkt")
        .key("never")
        .send()
        .await
        .unwrap();
    let del = Delete::builder()
        .objects(
            ObjectIdentifier::builder()
                .key("b")
                .version_id("null")
                .build()
                .unwrap(),
        )
        .objects(ObjectIdentifier::builder().key("c").build().unwrap())
        .objects(ObjectIdentifier::builder().key("absent").build().unwrap())
        .build()
        .unwrap();
    let out = c
        .delete_objects()
        .bucket("bkt")
        .delete(del)
        .send()
        .await
        .unwrap();
    let mut deleted: Vec<_> = out.deleted().iter().filter_map(|d| d.key()).collect();
    deleted.sort();
    assert_eq!(deleted, ["absent", "b", "c"]);
    assert!(out.errors().is_empty(), "{:?}", out.errors());
    assert_eq!(keys(&c, "bkt").await, ["d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_object_shares_chunks() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    c.create_bucket().bucket("dst").send().await.unwrap();
    let data = random_bytes(16 * MIB, 13);
    c.put_object()
        .bucket("bkt")
        .key("src")
        .metadata("m", "1")
        .content_type("text/x-src")
        .body(data.clone().into())
        .send()
        .await
        .unwrap();
    let chunks_before = gauge(&server, "strato_chunks").await;
    assert!(chunks_before > 0.0);

    let out = c
        .copy_object()
        .bucket("dst")
        .key("copy")
        .copy_source("bkt/src")
        .send()
        .await
        .unwrap();
    let etag = out
        .copy_object_result()
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    assert_eq!(etag, quoted_md5(&data));
    let out = c
        .copy_object()
        .bucket("bkt")
        .key("replaced")
        .copy_source("bkt/src")
        .metadata_directive(MetadataDirective::Replace)
        .metadata("m", "2")
        .content_type("text/x-new")
        .send()
        .await
        .unwrap();
    assert!(out.copy_object_result().is_some());
    assert_eq!(
        gauge(&server, "strato_chunks").await,
        chunks_before,
        "a copy stores no new chunk"
    );

    assert!(get(&c, "dst", "copy").await == data);
    let h = c
        .head_object()
        .bucket("dst")
        .key("copy")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_type(), Some("text/x-src"));
    assert_eq!(h.metadata().unwrap().get("m").unwrap(), "1");
    let h = c
        .head_object()
        .bucket("bkt")
        .key("replaced")
        .send()
        .await
        .unwrap();
    assert_eq!(h.content_type(), Some("text/x-new"));
    assert_eq!(h.metadata().unwrap().get("m").unwrap(), "2");
    assert!(get(&c, "bkt", "replaced").await == data);

    // The copy survives the source.
    c.delete_object()
        .bucket("bkt")
        .key("src")
        .send()
        .await
        .unwrap();
    assert!(get(&c, "dst", "copy").await == data);
    let e = c
        .copy_object()
        .bucket("dst")
        .key("x")
        .copy_source("bkt/src")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let etag = put(&c, "bkt", "k", b"version one").await;
    let cond = |k: &'static str| c.get_object().bucket("bkt").key(k);

    assert!(cond("k").if_match(&etag).send().await.is_ok());
    let e = cond("k").if_match("\"0000\"").send().await.unwrap_err();
    assert_eq!(status(&e), Some(412));
    assert_eq!(code(&e), "PreconditionFailed");
    let e = cond("k").if_none_match(&etag).send().await.unwrap_err();
    assert_eq!(status(&e), Some(304));
    assert!(cond("k").if_none_match("\"0000\"").send().await.is_ok());
    let future = DateTime::from(SystemTime::now() + Duration::from_secs(3600));
    let past = DateTime::from(SystemTime::now() - Duration::from_secs(3600));
    let e = cond("k")
        .if_modified_since(future)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(304));
    assert!(cond("k").if_modified_since(past).send().await.is_ok());
    let e = cond("k")
        .if_unmodified_since(past)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(412));
    assert!(cond("k").if_unmodified_since(future).send().await.is_ok());
    let e = c
        .head_object()
        .bucket("bkt")
        .key("k")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(304));

    // Conditional writes: If-Match replaces only the version the writer saw.
    let e = c
        .put_object()
        .bucket("bkt")
        .key("k")
        .if_match("\"0123\"")
        .body(b"lost".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    c.put_object()
        .bucket("bkt")
        .key("k")
        .if_match(&etag)
        .body(b"version two".to_vec().into())
        .send()
        .await
        .unwrap();
    let e = c
        .put_object()
        .bucket("bkt")
        .key("k")
        .if_none_match("*")
        .body(b"lost".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    assert!(body_bytes(cond("k").send().await.unwrap()).await == b"version two");

    // Racing If-None-Match: * writers on a fresh key: exactly one wins, and
    // the stored object is the winner's, whole.
    let bodies: Vec<Bytes> = (0..16)
        .map(|i| Bytes::from(random_bytes(MIB + i, 100 + i as u64)))
        .collect();
    let mut tasks = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let (c, body) = (c.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = c
                .put_object()
                .bucket("bkt")
                .key("once")
                .if_none_match("*")
                .body(ByteStream::from(body))
                .send()
                .await;
            (i, r)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r {
            Ok(_) => winners.push(i),
            Err(e) => {
                let code = code(&e);
                assert!(
                    code == "PreconditionFailed" || code == "ConditionalRequestConflict",
                    "{code}: {e:?}"
                );
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one conditional write wins");
    assert!(get(&c, "bkt", "once").await == bodies[winners[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_v1_and_v2() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let all = [
        "a/1", "a/2", "a/b/3", "b", "c/x y", "c/z", "d", "e/1", "e/2", "f",
    ];
    // Put in a shuffled order: listings are lexicographic regardless.
    for k in [
        "f", "a/2", "d", "c/z", "a/b/3", "e/2", "b", "a/1", "c/x y", "e/1",
    ] {
        put(&c, "bkt", k, k.as_bytes()).await;
    }
    assert_eq!(keys(&c, "bkt").await, all);

    // v2: max-keys pages, continuation tokens, correct truncation.
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let p = c
            .list_objects_v2()
            .bucket("bkt")
            .max_keys(3)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert_eq!(p.max_keys(), Some(3));
        assert!(p.contents().len() <= 3);
        assert_eq!(p.key_count(), Some(p.contents().len() as i32));
        seen.extend(p.contents().iter().map(|o| o.key().unwrap().to_owned()));
        if p.is_truncated() != Some(true) {
            assert!(p.next_continuation_token().is_none());
            break;
        }
        token = p.next_continuation_token().map(str::to_owned);
        assert!(pages < 10);
    }
    assert_eq!(seen, all);
    assert_eq!(pages, 4);
    let o = &c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("d")
        .send()
        .await
        .unwrap()
        .contents()[0]
        .clone();
    assert_eq!(o.size(), Some(1));
    assert_eq!(o.e_tag(), Some(quoted_md5(b"d").as_str()));

    // prefix + delimiter: CommonPrefixes, and max-keys counts them.
    let p = c
        .list_objects_v2()
        .bucket("bkt")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<_> = p
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    let contents: Vec<_> = p.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(prefixes, ["a/", "c/", "e/"]);
    assert_eq!(contents, ["b", "d", "f"]);
    let p = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("a/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<_> = p
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    let contents: Vec<_> = p.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!((prefixes, contents), (vec!["a/b/"], vec!["a/1", "a/2"]));
    let mut entries = Vec::new();
    let mut token = None;
    for _ in 0..10 {
        let p = c
            .list_objects_v2()
            .bucket("bkt")
            .delimiter("/")
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        assert!(p.contents().len() + p.common_prefixes().len() <= 2);
        entries.extend(
            p.common_prefixes()
                .iter()
                .map(|x| x.prefix().unwrap().to_owned()),
        );
        entries.extend(p.contents().iter().map(|x| x.key().unwrap().to_owned()));
        if p.is_truncated() != Some(true) {
            break;
        }
        token = p.next_continuation_token().map(str::to_owned);
    }
    entries.sort();
    assert_eq!(entries, ["a/", "b", "c/", "d", "e/", "f"]);

    // start-after
    let p = c
        .list_objects_v2()
        .bucket("bkt")
        .start_after("c/x y")
        .send()
        .await
        .unwrap();
    let contents: Vec<_> = p.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(contents, ["c/z", "d", "e/1", "e/2", "f"]);
    let p = c
        .list_objects_v2()
        .bucket("bkt")
        .start_after("zzz")
        .send()
        .await
        .unwrap();
    assert!(p.contents().is_empty() && p.is_truncated() == Some(false));

    // fetch-owner
    let p = c
        .list_objects_v2()
        .bucket("bkt")
        .fetch_owner(true)
        .max_keys(1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        p.contents()[0].owner().and_then(|o| o.display_name()),
        Some("admin")
    );

    // v1: marker / NextMarker.
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    for _ in 0..10 {
        let p = c
            .list_objects()
            .bucket("bkt")
            .max_keys(4)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        seen.extend(p.contents().iter().map(|o| o.key().unwrap().to_owned()));
        if p.is_truncated() != Some(true) {
            break;
        }
        marker = Some(
            p.next_marker()
                .map(str::to_owned)
                .unwrap_or_else(|| seen.last().unwrap().clone()),
        );
    }
    assert_eq!(seen, all);
    let p = c
        .list_objects()
        .bucket("bkt")
        .delimiter("/")
        .prefix("e")
        .send()
        .await
        .unwrap();
    let prefixes: Vec<_> = p
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(prefixes, ["e/"]);
    assert!(p.contents().is_empty());
    let p = c
        .list_objects()
        .bucket("bkt")
        .delimiter("/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(p.is_truncated(), Some(true));
    assert_eq!(p.next_marker(), Some("b"));
    let p = c
        .list_objects()
        .bucket("bkt")
        .delimiter("/")
        .marker("b")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    let prefixes: Vec<_> = p
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    let contents: Vec<_> = p.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!((prefixes, contents), (vec!["c/"], vec!["d"]));

    // encoding-type=url (the SDK decodes the keys again).
    let (st, _, body) = Signed::new(&server)
        .send(
            "GET",
            "/bkt?list-type=2&prefix=c%2F&encoding-type=url",
            &[],
            None,
            vec![],
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("<Key>c/x%20y</Key>") || body.contains("<Key>c%2Fx%20y</Key>"),
        "{body}"
    );
    assert!(body.contains("<EncodingType>url</EncodingType>"), "{body}");

    let e = c.list_objects_v2().bucket("nope").send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchBucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_200_mib() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let part_size = 8 * MIB;
    let data = Bytes::from(random_bytes(200 * MIB, 14));
    let up = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("big.img")
        .content_type("application/octet-stream")
        .metadata("kind", "image")
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap().to_owned();

    let lu = c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert_eq!(lu.uploads().len(), 1);
    assert_eq!(lu.uploads()[0].upload_id(), Some(id.as_str()));
    assert_eq!(lu.uploads()[0].key(), Some("big.img"));

    // Four parts in flight at a time.
    let n_parts = data.len().div_ceil(part_size);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for i in 0..n_parts {
        let (c, id, sem) = (c.clone(), id.clone(), sem.clone());
        let body = data.slice(i * part_size..((i + 1) * part_size).min(data.len()));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let out = c
                .upload_part()
                .bucket("bkt")
                .key("big.img")
                .upload_id(&id)
                .part_number(i as i32 + 1)
                .body(ByteStream::from(body.clone()))
                .send()
                .await
                .unwrap();
            let etag = out.e_tag().unwrap().to_owned();
            assert_eq!(etag, quoted_md5(&body));
            etag
        }));
    }
    let mut parts = Vec::new();
    let mut md5s = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let etag = t.await.unwrap();
        md5s.extend(hex::decode(etag.trim_matches('"')).unwrap());
        parts.push(part(i as i32 + 1, &etag));
    }

    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("big.img")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), n_parts);
    assert_eq!(lp.parts()[0].size(), Some(part_size as i64));
    assert_eq!(lp.parts()[0].e_tag(), Some(parts[0].e_tag().unwrap()));
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("big.img")
        .upload_id(&id)
        .max_parts(10)
        .part_number_marker("10")
        .send()
        .await
        .unwrap();
    let numbers: Vec<_> = lp
        .parts()
        .iter()
        .filter_map(aws_sdk_s3::types::Part::part_number)
        .collect();
    assert_eq!(numbers, (11..=20).collect::<Vec<_>>());
    assert_eq!(lp.is_truncated(), Some(true));

    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("big.img")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let expected = format!("\"{}-{n_parts}\"", md5_hex(&md5s));
    assert_eq!(done.e_tag(), Some(expected.as_str()));
    assert!(expected.ends_with("-25\""));

    let head = c
        .head_object()
        .bucket("bkt")
        .key("big.img")
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag(), Some(expected.as_str()));
    assert_eq!(head.content_length(), Some(data.len() as i64));
    assert_eq!(head.content_type(), Some("application/octet-stream"));
    assert_eq!(head.metadata().unwrap().get("kind").unwrap(), "image");
    let got = get(&c, "bkt", "big.img").await;
    assert!(got == data, "GET of the multipart object is byte-identical");
    drop(got);
    // A range across a part boundary.
    let a = part_size - 100;
    let got = c
        .get_object()
        .bucket("bkt")
        .key("big.img")
        .range(format!("bytes={a}-{}", a + 199))
        .send()
        .await
        .unwrap();
    assert!(body_bytes(got).await == data[a..a + 200]);

    let lu = c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(lu.uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_part_copy_abort_and_list_uploads() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let src = random_bytes(12 * MIB, 15);
    put(&c, "bkt", "src", &src).await;
    let chunks_before = gauge(&server, "strato_chunks").await;

    let id = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("assembled")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    // Part 1: the first 6 MiB of src; part 2: the whole of src; part 3: new data.
    let p1 = c
        .upload_part_copy()
        .bucket("bkt")
        .key("assembled")
        .upload_id(&id)
        .part_number(1)
        .copy_source("bkt/src")
        .copy_source_range(format!("bytes=0-{}", 6 * MIB - 1))
        .send()
        .await
        .unwrap();
    let e1 = p1.copy_part_result().unwrap().e_tag().unwrap().to_owned();
    assert_eq!(e1, quoted_md5(&src[..6 * MIB]));
    let p2 = c
        .upload_part_copy()
        .bucket("bkt")
        .key("assembled")
        .upload_id(&id)
        .part_number(2)
        .copy_source("bkt/src")
        .send()
        .await
        .unwrap();
    let e2 = p2.copy_part_result().unwrap().e_tag().unwrap().to_owned();
    assert_eq!(e2, quoted_md5(&src));
    let tail = b"tail".to_vec();
    let e3 = c
        .upload_part()
        .bucket("bkt")
        .key("assembled")
        .upload_id(&id)
        .part_number(3)
        .body(tail.clone().into())
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    let e = c
        .upload_part_copy()
        .bucket("bkt")
        .key("assembled")
        .upload_id(&id)
        .part_number(4)
        .copy_source("bkt/missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");

    // Two more uploads, one under another prefix, to list and abort.
    let other = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("x/other")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    c.upload_part()
        .bucket("bkt")
        .key("x/other")
        .upload_id(&other)
        .part_number(1)
        .body(random_bytes(MIB, 16).into())
        .send()
        .await
        .unwrap();
    let lu = c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    let mut listed: Vec<_> = lu.uploads().iter().filter_map(|u| u.key()).collect();
    listed.sort();
    assert_eq!(listed, ["assembled", "x/other"]);
    let lu = c
        .list_multipart_uploads()
        .bucket("bkt")
        .prefix("x/")
        .send()
        .await
        .unwrap();
    assert_eq!(lu.uploads().len(), 1);
    assert_eq!(lu.uploads()[0].upload_id(), Some(other.as_str()));

    c.abort_multipart_upload()
        .bucket("bkt")
        .key("x/other")
        .upload_id(&other)
        .send()
        .await
        .unwrap();
    let e = c
        .list_parts()
        .bucket("bkt")
        .key("x/other")
        .upload_id(&other)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    let e = c
        .upload_part()
        .bucket("bkt")
        .key("x/other")
        .upload_id(&other)
        .part_number(2)
        .body(b"late".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");

    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("assembled")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(part(1, &e1))
                .parts(part(2, &e2))
                .parts(part(3, &e3))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(done.e_tag().unwrap().ends_with("-3\""));
    let mut expected = src[..6 * MIB].to_vec();
    expected.extend_from_slice(&src);
    expected.extend_from_slice(&tail);
    assert!(get(&c, "bkt", "assembled").await == expected);
    assert_eq!(keys(&c, "bkt").await, ["assembled", "src"]);
    let lu = c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(lu.uploads().is_empty());
    // Copied parts reuse the source's chunks: only the 1 MiB aborted part and
    // the tail (and the part-1 cut, at most a few chunks) are new.
    let chunks_after = gauge(&server, "strato_chunks").await;
    assert!(
        chunks_after - chunks_before < 64.0,
        "{chunks_before} -> {chunks_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_users_own_their_buckets() {
    let strato = Strato::new("redb");
    let cfg = strato.dir.path().join("strato.toml");
    std::fs::write(
        &cfg,
        "[[users]]\nname = \"bob\"\naccess_key = \"BOBACCESSKEY00000001\"\n\
         secret_key = \"bob-secret-key-0123456789\"\n\n\
         [[users]]\nname = \"carol\"\naccess_key = \"CAROLACCESSKEY000001\"\n\
         secret_key = \"carol-secret-key-0123456789\"\n",
    )
    .unwrap();
    let server = Server::start_with(strato, &[("STRATO_CONFIG", cfg.to_str().unwrap())]);
    let admin = client(&server);
    let bob = client_with(
        &server.endpoint,
        "BOBACCESSKEY00000001",
        "bob-secret-key-0123456789",
    );
    let carol = client_with(
        &server.endpoint,
        "CAROLACCESSKEY000001",
        "carol-secret-key-0123456789",
    );
    admin.create_bucket().bucket("admins").send().await.unwrap();
    bob.create_bucket().bucket("bobs").send().await.unwrap();
    put(&admin, "admins", "secret", b"admin data").await;
    put(&bob, "bobs", "img", b"bob data").await;

    let names = |lb: aws_sdk_s3::operation::list_buckets::ListBucketsOutput| {
        let owner = lb.owner().and_then(|o| o.display_name()).map(str::to_owned);
        let names: Vec<String> = lb
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_owned))
            .collect();
        (owner, names)
    };
    assert_eq!(
        names(bob.list_buckets().send().await.unwrap()),
        (Some("bob".into()), vec!["bobs".into()])
    );
    assert_eq!(
        names(admin.list_buckets().send().await.unwrap()),
        (Some("admin".into()), vec!["admins".into()])
    );
    assert_eq!(
        names(carol.list_buckets().send().await.unwrap()),
        (Some("carol".into()), vec![])
    );

    // Bob cannot read, list, write or delete in admin's bucket, nor carol in bob's.
    let e = bob
        .get_object()
        .bucket("admins")
        .key("secret")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .list_objects_v2()
        .bucket("admins")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .put_object()
        .bucket("admins")
        .key("planted")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .delete_object()
        .bucket("admins")
        .key("secret")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .delete_bucket()
        .bucket("admins")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .copy_object()
        .bucket("bobs")
        .key("stolen")
        .copy_source("admins/secret")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = carol
        .get_object()
        .bucket("bobs")
        .key("img")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = carol
        .create_bucket()
        .bucket("bobs")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BucketAlreadyExists");

    // Upload ids are not capabilities: admin's upload, addressed through
    // bob's own bucket or through admin's, is out of bob's reach.
    let id = admin
        .create_multipart_upload()
        .bucket("admins")
        .key("big")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let e = bob
        .upload_part()
        .bucket("bobs")
        .key("big")
        .upload_id(&id)
        .part_number(1)
        .body(b"planted".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    let e = bob
        .list_parts()
        .bucket("bobs")
        .key("big")
        .upload_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    let e = bob
        .abort_multipart_upload()
        .bucket("bobs")
        .key("big")
        .upload_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    let e = bob
        .abort_multipart_upload()
        .bucket("admins")
        .key("big")
        .upload_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .list_multipart_uploads()
        .bucket("admins")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let lp = admin
        .list_parts()
        .bucket("admins")
        .key("big")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert!(lp.parts().is_empty(), "nothing planted");

    assert_eq!(keys(&admin, "admins").await, ["secret"]);
    assert_eq!(keys(&bob, "bobs").await, ["img"]);
    assert!(get(&admin, "admins", "secret").await == b"admin data");
    assert!(get(&bob, "bobs", "img").await == b"bob data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunking_override_header() {
    let mut server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let before = gauge(&server, "strato_chunks").await;
    let data = random_bytes(MIB, 18);
    c.put_object()
        .bucket("bkt")
        .key("fixed")
        .metadata("strato-chunking", "fixed:65536")
        .body(data.clone().into())
        .send()
        .await
        .unwrap();
    assert_eq!(
        gauge(&server, "strato_chunks").await - before,
        16.0,
        "1 MiB of random data in fixed 64 KiB chunks is 16 chunks"
    );
    assert!(get(&c, "bkt", "fixed").await == data);

    let e = c
        .put_object()
        .bucket("bkt")
        .key("bad-profile")
        .metadata("strato-chunking", "fixed:banana")
        .body(data.clone().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
    // Multipart uploads take it too.
    let id = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("mp-fixed")
        .metadata("strato-chunking", "fixed:65536")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let other = random_bytes(MIB, 19);
    let etag = c
        .upload_part()
        .bucket("bkt")
        .key("mp-fixed")
        .upload_id(&id)
        .part_number(1)
        .body(other.clone().into())
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("mp-fixed")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(part(1, &etag))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(gauge(&server, "strato_chunks").await - before, 32.0);
    assert_eq!(keys(&c, "bkt").await, ["fixed", "mp-fixed"]);

    // The store records the profile (read with the CLI once the server is gone).
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let ls = server.strato.json(&["ls", "bkt"]);
    let rows = ls.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{ls}");
    for r in rows {
        let profile = r["profile"].to_string();
        assert!(
            profile.contains("fixed") && profile.contains("65536"),
            "{r}"
        );
    }
}

// ---------------------------------------------------------------------------
// Bad input: the right S3 error, and nothing stored.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_expired_presign() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();

    let wrong = client_with(&server.endpoint, &server.access_key, "wrong-secret");
    let e = wrong
        .put_object()
        .bucket("bkt")
        .key("k")
        .body(random_bytes(100_000, 1).into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    assert_eq!(status(&e), Some(403));
    let e = wrong.list_buckets().send().await.unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    let unknown = client_with(&server.endpoint, "AKIDNOBODY0000000000", "whatever");
    let e = unknown
        .put_object()
        .bucket("bkt")
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidAccessKeyId");
    let e = unknown
        .create_bucket()
        .bucket("intruder")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidAccessKeyId");

    // Expired presigned PUT and GET.
    let old = SystemTime::now() - Duration::from_secs(3600);
    let cfg = || {
        PresigningConfig::builder()
            .start_time(old)
            .expires_in(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let url = c
        .put_object()
        .bucket("bkt")
        .key("k")
        .presigned(cfg())
        .await
        .unwrap();
    let (st, _, body) = raw_request("PUT", url.uri(), &[], b"data".to_vec()).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    put(&c, "bkt", "there", b"there").await;
    let url = c
        .get_object()
        .bucket("bkt")
        .key("there")
        .presigned(cfg())
        .await
        .unwrap();
    let (st, _, body) = raw_request("GET", url.uri(), &[], vec![]).await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    // A header signature an hour old.
    let mut s = Signed::new(&server);
    s.time = old;
    let (st, _, body) = s.send("PUT", "/bkt/k", &[], None, b"data".to_vec()).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("RequestTimeTooSkewed"), "{body}");

    assert_eq!(keys(&c, "bkt").await, ["there"]);
    let lb = c.list_buckets().send().await.unwrap();
    assert_eq!(lb.buckets().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_multipart_completions() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let id = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("k")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let mut etags = Vec::new();
    for (n, size) in [(1, MIB), (2, 5 * MIB), (3, 100)] {
        let out = c
            .upload_part()
            .bucket("bkt")
            .key("k")
            .upload_id(&id)
            .part_number(n)
            .body(random_bytes(size, n as u64).into())
            .send()
            .await
            .unwrap();
        etags.push(out.e_tag().unwrap().to_owned());
    }
    let complete = |parts: Vec<CompletedPart>| {
        c.complete_multipart_upload()
            .bucket("bkt")
            .key("k")
            .upload_id(&id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
    };
    let e = complete(vec![part(2, &etags[1]), part(1, &etags[0])])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidPartOrder");
    let e = complete(vec![part(1, &etags[0]), part(2, &etags[1])])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "EntityTooSmall");
    let e = complete(vec![
        part(2, "\"00000000000000000000000000000000\""),
        part(3, &etags[2]),
    ])
    .await
    .unwrap_err();
    assert_eq!(code(&e), "InvalidPart");
    let e = complete(vec![part(2, &etags[1]), part(4, &etags[2])])
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidPart");
    let e = complete(vec![]).await.unwrap_err();
    assert_eq!(status(&e), Some(400));
    for xml in [
        &b"<CompleteMultipartUpload><Part>"[..],
        b"not xml at all",
        b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber></Part></CompleteMultipartUpload>",
    ] {
        let (st, _, body) = Signed::new(&server)
            .send("POST", &format!("/bkt/k?uploadId={id}"), &[], None, xml.to_vec())
            .await;
        assert_eq!(st, 400, "{body}");
        assert!(body.contains("<Code>MalformedXML</Code>"), "{body}");
    }
    assert!(
        keys(&c, "bkt").await.is_empty(),
        "no failed completion stored"
    );

    // The upload is still there and completes correctly afterwards.
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("k")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 3);
    complete(vec![part(2, &etags[1]), part(3, &etags[2])])
        .await
        .unwrap();
    let mut expected = random_bytes(5 * MIB, 2);
    expected.extend(random_bytes(100, 3));
    assert!(get(&c, "bkt", "k").await == expected);
    let e = complete(vec![part(2, &etags[1])]).await.unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_digests_and_checksums() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let data = random_bytes(300_000, 20);
    let e = c
        .put_object()
        .bucket("bkt")
        .key("md5")
        .content_md5(md5_b64(b"something else"))
        .body(data.clone().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest");
    let e = c
        .put_object()
        .bucket("bkt")
        .key("crc")
        .checksum_crc32(crc32_b64(b"something else"))
        .body(data.clone().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest");
    let e = c
        .put_object()
        .bucket("bkt")
        .key("sha")
        .checksum_sha256(b64(&[7u8; 32]))
        .body(data.clone().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest");
    // Part uploads check Content-MD5 too.
    let id = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("mp")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let e = c
        .upload_part()
        .bucket("bkt")
        .key("mp")
        .upload_id(&id)
        .part_number(1)
        .content_md5(md5_b64(b"other"))
        .body(data.clone().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest");
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("mp")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert!(lp.parts().is_empty());

    // A wrong CRC32 in an aws-chunked trailer, sent by hand.
    let body = chunked(&data, 64 * 1024, "x-amz-checksum-crc32:AAAAAA==");
    let len = data.len().to_string();
    let (st, _, resp) = Signed::new(&server)
        .send(
            "PUT",
            "/bkt/trailer",
            &[
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", &len),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
                ("x-amz-sdk-checksum-algorithm", "CRC32"),
            ],
            Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            body,
        )
        .await;
    assert_eq!(st, 400, "{resp}");
    assert!(resp.contains("<Code>BadDigest</Code>"), "{resp}");
    // A payload that does not match its signed SHA-256.
    let (st, _, resp) = Signed::new(&server)
        .send(
            "PUT",
            "/bkt/sha-mismatch",
            &[],
            Some(&"0".repeat(64)),
            data.clone(),
        )
        .await;
    assert_eq!(st, 400, "{resp}");
    assert!(resp.contains("XAmzContentSHA256Mismatch"), "{resp}");

    assert!(keys(&c, "bkt").await.is_empty(), "nothing stored");
    // The right trailer is accepted.
    let body = chunked(
        &data,
        64 * 1024,
        &format!("x-amz-checksum-crc32:{}", crc32_b64(&data)),
    );
    let (st, _, resp) = Signed::new(&server)
        .send(
            "PUT",
            "/bkt/trailer",
            &[
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", &len),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
                ("x-amz-sdk-checksum-algorithm", "CRC32"),
            ],
            Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            body,
        )
        .await;
    assert_eq!(st, 200, "{resp}");
    assert!(get(&c, "bkt", "trailer").await == data);
}

/// aws-chunked framing (unsigned chunks) with a trailer.
fn chunked(data: &[u8], chunk: usize, trailer: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("0\r\n{trailer}\r\n\r\n").as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_and_plain_dot_keys() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();

    let long = "k".repeat(1025);
    let e = c
        .put_object()
        .bucket("bkt")
        .key(&long)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "KeyTooLongError");
    let e = c
        .create_multipart_upload()
        .bucket("bkt")
        .key(&long)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "KeyTooLongError");
    let e = c
        .put_object()
        .bucket("bkt")
        .key("with\0nul")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    assert!(keys(&c, "bkt").await.is_empty());

    // The longest allowed key, multi-byte UTF-8 and path-looking keys are
    // stored as plain keys.
    let max = "é".repeat(512);
    assert_eq!(max.len(), 1024);
    let odd = [
        "../etc/passwd",
        "../../escape",
        "a/../b",
        "./dot",
        "..",
        ".",
        "/leading-slash",
        "trailing/",
        "double//slash",
        "a\\..\\b",
        "%2e%2e/enc",
        "spaces and ?query=1&x#frag",
        "ünïcödé/ключ",
        max.as_str(),
    ];
    for (i, k) in odd.iter().enumerate() {
        put(&c, "bkt", k, format!("body {i}").as_bytes()).await;
    }
    let mut expected: Vec<String> = odd.iter().map(std::string::ToString::to_string).collect();
    expected.sort();
    assert_eq!(keys(&c, "bkt").await, expected);
    for (i, k) in odd.iter().enumerate() {
        assert_eq!(
            get(&c, "bkt", k).await,
            format!("body {i}").as_bytes(),
            "{k:?}"
        );
    }
    // Nothing escaped the data directory.
    for name in ["etc", "escape", "b", "dot"] {
        assert!(!server.strato.dir.path().join(name).exists(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upload_stores_nothing() {
    use std::io::{Read, Write};
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();

    // A header-signed PUT with UNSIGNED-PAYLOAD that declares 4 MiB and sends
    // 1 MiB before closing its side; the same with a presigned URL.
    let signed = Signed::new(&server).build(
        "PUT",
        "/bkt/header-signed",
        &[],
        Some("UNSIGNED-PAYLOAD"),
        Vec::new(),
    );
    let mut head = String::from("PUT /bkt/header-signed HTTP/1.1\r\n");
    for (k, v) in signed.headers() {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    let presigned = c
        .put_object()
        .bucket("bkt")
        .key("presigned")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let uri: http::Uri = presigned.uri().parse().unwrap();
    let head2 = format!(
        "PUT {} HTTP/1.1\r\nhost: {}\r\n",
        uri.path_and_query().unwrap(),
        server.host
    );
    let declared = 4 * MIB;
    let sent = random_bytes(MIB, 21);
    for head in [head, head2] {
        let mut sock = std::net::TcpStream::connect(&server.host).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(sock, "{head}content-length: {declared}\r\n\r\n").unwrap();
        sock.write_all(&sent).unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        let mut resp = Vec::new();
        let _ = sock.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        assert!(!resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(keys(&c, "bkt").await.is_empty(), "no truncated object");
    let e = c
        .head_object()
        .bucket("bkt")
        .key("presigned")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(404));

    // The same requests with the whole body succeed.
    let full = random_bytes(declared, 22);
    let (st, _, _) = raw_request("PUT", presigned.uri(), &[], full.clone()).await;
    assert_eq!(st, 200);
    let (st, _, body) = Signed::new(&server)
        .send(
            "PUT",
            "/bkt/header-signed",
            &[],
            Some("UNSIGNED-PAYLOAD"),
            full.clone(),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(keys(&c, "bkt").await, ["header-signed", "presigned"]);
    assert!(get(&c, "bkt", "presigned").await == full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_bucket_names() {
    let server = Server::start("redb");
    let c = client(&server);
    for name in ["chunks", "metrics"] {
        let e = c.create_bucket().bucket(name).send().await.unwrap_err();
        // Refused by the bucket layer, or answered by the server's own
        // route of that name; never created.
        assert!(
            matches!(
                code(&e).as_str(),
                "BucketAlreadyExists" | "InvalidRequest" | "InvalidBucketName"
            ),
            "{name}: {e:?}"
        );
        let e = c
            .put_object()
            .bucket(name)
            .key("k")
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap_err();
        assert!(matches!(status(&e), Some(400..=405)), "{name}: {e:?}");
    }
    for name in ["UPPER", "a", "-dash", "bad_underscore", "192.168.1.1"] {
        let e = c.create_bucket().bucket(name).send().await.unwrap_err();
        assert_eq!(code(&e), "InvalidBucketName", "{name}");
    }
    assert!(c.list_buckets().send().await.unwrap().buckets().is_empty());
    // /metrics still answers.
    assert!(gauge(&server, "strato_chunks").await >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_objects_and_default_page_size() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();

    // A zero-byte object: ETag is the MD5 of nothing; no range is satisfiable.
    let etag = put(&c, "bkt", "empty", b"").await;
    assert_eq!(etag, quoted_md5(b""));
    let head = c
        .head_object()
        .bucket("bkt")
        .key("empty")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(0));
    assert!(get(&c, "bkt", "empty").await.is_empty());
    let e = c
        .get_object()
        .bucket("bkt")
        .key("empty")
        .range("bytes=0-")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(416));

    // More keys than one default page (1000): truncated, then the rest.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..1005).step_by(16) {
                put(&c, "bkt", &format!("many/{i:04}"), &[]).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let p = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("many/")
        .send()
        .await
        .unwrap();
    assert_eq!(p.contents().len(), 1000);
    assert_eq!(p.is_truncated(), Some(true));
    assert_eq!(p.contents()[999].key(), Some("many/0999"));
    let p = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("many/")
        .continuation_token(p.next_continuation_token().unwrap())
        .send()
        .await
        .unwrap();
    let rest: Vec<_> = p.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        rest,
        [
            "many/1000",
            "many/1001",
            "many/1002",
            "many/1003",
            "many/1004"
        ]
    );
    assert_eq!(p.is_truncated(), Some(false));
    let p = c
        .list_objects()
        .bucket("bkt")
        .prefix("many/")
        .send()
        .await
        .unwrap();
    assert_eq!((p.contents().len(), p.is_truncated()), (1000, Some(true)));
    assert_eq!(keys(&c, "bkt").await.len(), 1006);
}

/// Overwrites with the same content, copies onto itself, copies whose source
/// is then deleted, multipart parts shared with objects, aborted uploads:
/// after the server stops, `strato gc --grace 0` and `strato fsck` find the
/// store consistent and every surviving object reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_chunks_survive_gc() {
    let mut server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let x = random_bytes(6 * MIB, 30);
    let y = random_bytes(2 * MIB, 31);
    let z = random_bytes(3 * MIB, 32);

    put(&c, "bkt", "same", &x).await;
    put(&c, "bkt", "same", &x).await;

    put(&c, "bkt", "self", &y).await;
    let e = c
        .copy_object()
        .bucket("bkt")
        .key("self")
        .copy_source("bkt/self")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        "InvalidRequest",
        "a copy onto itself must change something"
    );
    c.copy_object()
        .bucket("bkt")
        .key("self")
        .copy_source("bkt/self")
        .metadata_directive(MetadataDirective::Replace)
        .metadata("touched", "yes")
        .send()
        .await
        .unwrap();

    put(&c, "bkt", "z1", &z).await;
    c.copy_object()
        .bucket("bkt")
        .key("z2")
        .copy_source("bkt/z1")
        .send()
        .await
        .unwrap();
    c.delete_object()
        .bucket("bkt")
        .key("z1")
        .send()
        .await
        .unwrap();

    put(&c, "bkt", "ovr", &random_bytes(2 * MIB, 33)).await;
    put(&c, "bkt", "ovr", &y).await;

    // A multipart object whose first part is x, and an aborted upload of z.
    let id = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("mp")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let mut parts = Vec::new();
    for (n, body) in [(1, &x), (2, &z)] {
        let etag = c
            .upload_part()
            .bucket("bkt")
            .key("mp")
            .upload_id(&id)
            .part_number(n)
            .body(body.clone().into())
            .send()
            .await
            .unwrap()
            .e_tag()
            .unwrap()
            .to_owned();
        parts.push(part(n, &etag));
    }
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("mp")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let aborted = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("gone")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    c.upload_part()
        .bucket("bkt")
        .key("gone")
        .upload_id(&aborted)
        .part_number(1)
        .body(random_bytes(MIB, 34).into())
        .send()
        .await
        .unwrap();
    c.abort_multipart_upload()
        .bucket("bkt")
        .key("gone")
        .upload_id(&aborted)
        .send()
        .await
        .unwrap();
    assert_eq!(keys(&c, "bkt").await, ["mp", "ovr", "same", "self", "z2"]);

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let s = &server.strato;
    s.ok(&["gc", "--grace", "0"]);
    s.ok(&["fsck"]);
    let mut mp = x.clone();
    mp.extend_from_slice(&z);
    let out = s.dir.path().join("out.bin");
    for (key, want) in [
        ("same", &x),
        ("self", &y),
        ("z2", &z),
        ("ovr", &y),
        ("mp", &mp),
    ] {
        s.ok(&["get", &format!("bkt/{key}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == *want, "{key} after gc");
    }
}

/// PUTs racing DeleteBucket: either the delete fails with BucketNotEmpty and
/// every acknowledged PUT is listed, or it succeeds and no PUT was
/// acknowledged, and a bucket re-created under the same name is empty (no
/// object committed into a deleted bucket resurfaces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_racing_delete_bucket() {
    let server = Server::start("redb");
    let c = client(&server);
    let (mut deleted, mut refused) = (0, 0);
    for round in 0..30u64 {
        c.create_bucket().bucket("race").send().await.unwrap();
        let mut puts = Vec::new();
        for i in 0..6u64 {
            let c = c.clone();
            puts.push(tokio::spawn(async move {
                if i % 2 == 1 {
                    tokio::time::sleep(Duration::from_micros(300 * i)).await;
                }
                let key = format!("r{round}-{i}");
                let r = c
                    .put_object()
                    .bucket("race")
                    .key(&key)
                    .body(random_bytes(64 * 1024, round * 10 + i).into())
                    .send()
                    .await;
                (key, r)
            }));
        }
        let del = {
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(200 * (round % 8))).await;
                c.delete_bucket().bucket("race").send().await
            })
        };
        let mut acked = Vec::new();
        for p in puts {
            let (key, r) = p.await.unwrap();
            match r {
                Ok(_) => acked.push(key),
                Err(e) => assert_eq!(code(&e), "NoSuchBucket", "{key}: {e:?}"),
            }
        }
        acked.sort();
        match del.await.unwrap() {
            Ok(_) => {
                deleted += 1;
                assert!(
                    acked.is_empty(),
                    "round {round}: bucket deleted under {acked:?}"
                );
                c.create_bucket().bucket("race").send().await.unwrap();
                assert!(keys(&c, "race").await.is_empty(), "round {round}: orphans");
            }
            Err(e) => {
                refused += 1;
                assert_eq!(code(&e), "BucketNotEmpty", "{e:?}");
                assert_eq!(keys(&c, "race").await, acked, "round {round}");
            }
        }
        for k in keys(&c, "race").await {
            c.delete_object()
                .bucket("race")
                .key(k)
                .send()
                .await
                .unwrap();
        }
        c.delete_bucket().bucket("race").send().await.unwrap();
    }
    eprintln!("delete won {deleted} rounds, puts won {refused}");

    // An upload in flight when its bucket goes: completing it afterwards
    // must not commit an object into the deleted (or a re-created) bucket.
    c.create_bucket().bucket("race").send().await.unwrap();
    let id = c
        .create_multipart_upload()
        .bucket("race")
        .key("late")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let etag = c
        .upload_part()
        .bucket("race")
        .key("late")
        .upload_id(&id)
        .part_number(1)
        .body(b"part".to_vec().into())
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .to_owned();
    match c.delete_bucket().bucket("race").send().await {
        Ok(_) => {
            eprintln!("a bucket with an upload in flight was deleted");
            c.create_bucket().bucket("race").send().await.unwrap();
            let e = c
                .complete_multipart_upload()
                .bucket("race")
                .key("late")
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .parts(part(1, &etag))
                        .build(),
                )
                .send()
                .await
                .unwrap_err();
            assert_eq!(code(&e), "NoSuchUpload");
            assert!(keys(&c, "race").await.is_empty());
        }
        Err(e) => {
            eprintln!("an upload in flight keeps its bucket");
            assert_eq!(code(&e), "BucketNotEmpty", "{e:?}");
        }
    }
}

/// "Stream, never buffer an object": one 256 MiB PUT from memory (the SDK
/// signs the payload hash over plain HTTP) and one GET leave the server's
/// peak RSS far below the object size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_transfer_is_not_buffered() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let data = Bytes::from(random_bytes(256 * MIB, 40));
    c.put_object()
        .bucket("bkt")
        .key("big")
        .body(ByteStream::from(data.clone()))
        .send()
        .await
        .unwrap();
    let after_put = hwm_mib(server.pid());
    let mut body = c
        .get_object()
        .bucket("bkt")
        .key("big")
        .send()
        .await
        .unwrap()
        .body;
    let mut at = 0;
    while let Some(piece) = body.try_next().await.unwrap() {
        assert!(piece[..] == data[at..at + piece.len()]);
        at += piece.len();
    }
    assert_eq!(at, data.len());
    let after_get = hwm_mib(server.pid());
    eprintln!(
        "server peak RSS: {after_put} MiB after a 256 MiB PUT, {after_get} MiB after its GET"
    );
    assert!(
        after_get < 128,
        "server peak RSS {after_get} MiB for one 256 MiB object"
    );
}

fn hwm_mib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib >> 10
}

/// Conditional writes on CompleteMultipartUpload (If-None-Match: *, If-Match),
/// checked atomically with the commit: racing completions of two uploads to
/// one fresh key, exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_multipart_completion() {
    let server = Server::start("redb");
    let c = client(&server);
    c.create_bucket().bucket("bkt").send().await.unwrap();
    let start = |key: &'static str, body: Vec<u8>| {
        let c = c.clone();
        async move {
            let id = c
                .create_multipart_upload()
                .bucket("bkt")
                .key(key)
                .send()
                .await
                .unwrap()
                .upload_id()
                .unwrap()
                .to_owned();
            let etag = c
                .upload_part()
                .bucket("bkt")
                .key(key)
                .upload_id(&id)
                .part_number(1)
                .body(body.into())
                .send()
                .await
                .unwrap()
                .e_tag()
                .unwrap()
                .to_owned();
            (id, etag)
        }
    };
    let complete = |key: &'static str, id: String, etag: String| {
        c.complete_multipart_upload()
            .bucket("bkt")
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(part(1, &etag))
                    .build(),
            )
    };

    let old = put(&c, "bkt", "exists", b"old").await;
    let (id, etag) = start("exists", b"new".to_vec()).await;
    let e = complete("exists", id.clone(), etag.clone())
        .if_none_match("*")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    let e = complete("exists", id.clone(), etag.clone())
        .if_match("\"00000000000000000000000000000000\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    assert_eq!(get(&c, "bkt", "exists").await, b"old");
    complete("exists", id, etag)
        .if_match(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(get(&c, "bkt", "exists").await, b"new");

    for round in 0..5u64 {
        let key: &'static str = ["r0", "r1", "r2", "r3", "r4"][round as usize];
        let a = start(key, random_bytes(1000, round * 2)).await;
        let b = start(key, random_bytes(1000, round * 2 + 1)).await;
        let (ra, rb) = tokio::join!(
            complete(key, a.0, a.1).if_none_match("*").send(),
            complete(key, b.0, b.1).if_none_match("*").send()
        );
        let wins = [ra.is_ok(), rb.is_ok()];
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "round {round}");
        for r in [ra.err(), rb.err()].into_iter().flatten() {
            assert_eq!(code(&r), "PreconditionFailed");
        }
        let winner = if wins[0] { round * 2 } else { round * 2 + 1 };
        assert_eq!(get(&c, "bkt", key).await, random_bytes(1000, winner));
    }
}
