use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use md5::{Digest, Md5};

use crate::{bucket, code, data, raw_request, status, Server};

#[tokio::test]
async fn odd_keys() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    for key in [
        "../x",
        "a/../../etc/passwd",
        "sp ace+plus%percent",
        "ünï/cødé",
        "a//b",
    ] {
        c.put_object()
            .bucket("bkt")
            .key(key)
            .body(key.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
        let got = c.get_object().bucket("bkt").key(key).send().await.unwrap();
        let b = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(b.as_ref(), key.as_bytes(), "{key}");
    }
    assert!(s.object_data("bkt", "../x").await.is_some());

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
    let ok = "k".repeat(1024);
    c.put_object()
        .bucket("bkt")
        .key(&ok)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();

    let e = c
        .put_object()
        .bucket("bkt")
        .key("nul\0key")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    assert_eq!(s.object_count("bkt").await, 6);
}

#[tokio::test]
async fn ranges() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let body = data(100_000, 2);
    c.put_object()
        .bucket("bkt")
        .key("k")
        .body(body.clone().into())
        .send()
        .await
        .unwrap();

    let cases: [(&str, std::ops::Range<usize>); 5] = [
        ("bytes=0-0", 0..1),
        ("bytes=10-19", 10..20),
        ("bytes=99990-", 99_990..100_000),
        ("bytes=-5", 99_995..100_000),
        ("bytes=50000-999999", 50_000..100_000),
    ];
    for (h, r) in cases {
        let got = c
            .get_object()
            .bucket("bkt")
            .key("k")
            .range(h)
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.content_range(),
            Some(format!("bytes {}-{}/100000", r.start, r.end - 1).as_str()),
            "{h}"
        );
        assert_eq!(got.content_length(), Some((r.end - r.start) as i64));
        let b = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(b.as_ref(), &body[r], "{h}");
    }

    let e = c
        .get_object()
        .bucket("bkt")
        .key("k")
        .range("bytes=100000-")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidRange");
    assert_eq!(status(&e), Some(416));

    // Plain HTTP: 206 status, Content-Range, no whole-object checksum.
    let url = c
        .get_object()
        .bucket("bkt")
        .key("k")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let (st, h, b) = raw_request(
        "GET",
        url.uri(),
        &[("range", "bytes=1-3"), ("x-amz-checksum-mode", "ENABLED")],
        vec![],
    )
    .await;
    assert_eq!(st, 206);
    assert_eq!(h.get("content-range").unwrap(), "bytes 1-3/100000");
    assert_eq!(h.get("accept-ranges").unwrap(), "bytes");
    assert_eq!(b, &body[1..4]);
    assert!(
        h.keys().all(|k| !k.as_str().starts_with("x-amz-checksum")),
        "{h:?}"
    );
    let (st, _, _) = raw_request("GET", url.uri(), &[("range", "bytes=200000-")], vec![]).await;
    assert_eq!(st, 416);
}

#[tokio::test]
async fn head_first_like_qemu() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    c.put_object()
        .bucket("bkt")
        .key("img")
        .body(data(4096, 3).into())
        .send()
        .await
        .unwrap();
    let url = c
        .head_object()
        .bucket("bkt")
        .key("img")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let (st, h, b) = raw_request("HEAD", url.uri(), &[], vec![]).await;
    assert_eq!(st, 200);
    assert_eq!(h.get("accept-ranges").unwrap(), "bytes");
    assert_eq!(h.get("content-length").unwrap(), "4096");
    assert!(b.is_empty());
    let (st, h, _) = raw_request("HEAD", url.uri(), &[("range", "bytes=0-511")], vec![]).await;
    assert_eq!(st, 206);
    assert_eq!(h.get("content-length").unwrap(), "512");
    assert_eq!(h.get("content-range").unwrap(), "bytes 0-511/4096");
    let (st, _, b) = raw_request("HEAD", url.uri(), &[("if-none-match", "*")], vec![]).await;
    assert_eq!(st, 304);
    assert!(b.is_empty());

    // QEMU is given a URL presigned for GET, and probes it with HEAD.
    let url = c
        .get_object()
        .bucket("bkt")
        .key("img")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let (st, h, b) = raw_request("HEAD", url.uri(), &[], vec![]).await;
    assert_eq!(st, 200);
    assert_eq!(h.get("accept-ranges").unwrap(), "bytes");
    assert_eq!(h.get("content-length").unwrap(), "4096");
    assert!(b.is_empty());
    let (st, _, b) = raw_request("GET", url.uri(), &[("range", "bytes=4000-")], vec![]).await;
    assert_eq!((st, b.len()), (206, 96));
    // A tampered URL stays refused under either method.
    let bad = url.uri().replace("img", "img2");
    let (st, _, _) = raw_request("HEAD", &bad, &[], vec![]).await;
    assert_eq!(st, 403);
}

#[tokio::test]
async fn checksum_mismatch_stores_nothing() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let e = c
        .put_object()
        .bucket("bkt")
        .key("bad")
        .body(b"hello world".to_vec().into())
        .checksum_crc32("AAAAAA==")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest", "{e:?}");
    let e = c
        .put_object()
        .bucket("bkt")
        .key("bad")
        .body(b"hello world".to_vec().into())
        .content_md5("AAAAAAAAAAAAAAAAAAAAAA==")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BadDigest", "{e:?}");
    let e = c
        .put_object()
        .bucket("bkt")
        .key("bad")
        .body(b"hello world".to_vec().into())
        .checksum_sha256("not base64!")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(400), "{e:?}");
    assert_eq!(s.object_count("bkt").await, 0);

    // The right values pass.
    c.put_object()
        .bucket("bkt")
        .key("good")
        .body(b"hello world".to_vec().into())
        .checksum_crc32("DUoRhQ==")
        .content_md5("XrY7u+Ae7tCTyyK7j1rNww==")
        .send()
        .await
        .unwrap();
    assert_eq!(s.object_count("bkt").await, 1);
}

#[tokio::test]
async fn truncated_upload_stores_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let url = c
        .put_object()
        .bucket("bkt")
        .key("trunc")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let uri: http::Uri = url.uri().parse().unwrap();
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000\r\n\r\n",
        uri.path_and_query().unwrap(),
        s.addr
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(&[7u8; 100]).await.unwrap();
    sock.shutdown().await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut resp)).await;
    // Give the server a moment in case it is still unwinding the request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        s.object_count("bkt").await,
        0,
        "{}",
        String::from_utf8_lossy(&resp)
    );

    // The same presigned URL with the full body works.
    let (st, _, _) = raw_request("PUT", url.uri(), &[], vec![7u8; 1000]).await;
    assert_eq!(st, 200);
    assert_eq!(s.object_count("bkt").await, 1);
}

#[tokio::test]
async fn conditional_reads() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let put = c
        .put_object()
        .bucket("bkt")
        .key("k")
        .body(b"v1".to_vec().into())
        .send()
        .await
        .unwrap();
    let etag = put.e_tag().unwrap().to_owned();
    let head = c.head_object().bucket("bkt").key("k").send().await.unwrap();
    let lm = *head.last_modified().unwrap();
    let later = aws_sdk_s3::primitives::DateTime::from_secs(lm.secs() + 3600);
    let earlier = aws_sdk_s3::primitives::DateTime::from_secs(lm.secs() - 3600);

    c.get_object()
        .bucket("bkt")
        .key("k")
        .if_match(&etag)
        .send()
        .await
        .unwrap();
    let e = c
        .get_object()
        .bucket("bkt")
        .key("k")
        .if_match("\"nope\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(412));
    let e = c
        .get_object()
        .bucket("bkt")
        .key("k")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(304));
    c.get_object()
        .bucket("bkt")
        .key("k")
        .if_none_match("\"other\"")
        .send()
        .await
        .unwrap();
    let e = c
        .get_object()
        .bucket("bkt")
        .key("k")
        .if_modified_since(later)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(304));
    c.get_object()
        .bucket("bkt")
        .key("k")
        .if_modified_since(earlier)
        .send()
        .await
        .unwrap();
    let e = c
        .get_object()
        .bucket("bkt")
        .key("k")
        .if_unmodified_since(earlier)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(412));
    let e = c
        .head_object()
        .bucket("bkt")
        .key("k")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(304));
    let e = c
        .head_object()
        .bucket("bkt")
        .key("k")
        .if_match("\"x\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(412));
}

#[tokio::test]
async fn conditional_writes_race() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.put_object()
                .bucket("bkt")
                .key("once")
                .if_none_match("*")
                .body(vec![i; 10_000].into())
                .send()
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(code(&e), "PreconditionFailed"),
        }
    }
    assert_eq!(ok, 1);

    // If-Match: replaces only the version the writer saw.
    let cur = c
        .head_object()
        .bucket("bkt")
        .key("once")
        .send()
        .await
        .unwrap();
    let etag = cur.e_tag().unwrap().to_owned();
    let e = c
        .put_object()
        .bucket("bkt")
        .key("once")
        .if_match("\"0123\"")
        .body(b"new".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    c.put_object()
        .bucket("bkt")
        .key("once")
        .if_match(&etag)
        .body(b"new".to_vec().into())
        .send()
        .await
        .unwrap();
    assert_eq!(s.object_data("bkt", "once").await.unwrap().as_ref(), b"new");
}

#[tokio::test]
async fn copy_object() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    bucket(&c, "bkt2").await;
    let body = data(50_000, 5);
    let put = c
        .put_object()
        .bucket("bkt")
        .key("src")
        .body(body.clone().into())
        .content_type("text/plain")
        .metadata("m", "1")
        .send()
        .await
        .unwrap();

    let out = c
        .copy_object()
        .bucket("bkt2")
        .key("dst")
        .copy_source("bkt/src")
        .send()
        .await
        .unwrap();
    assert_eq!(out.copy_object_result().unwrap().e_tag(), put.e_tag());
    let got = c
        .get_object()
        .bucket("bkt2")
        .key("dst")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(
        got.metadata().unwrap().get("m").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        got.body.collect().await.unwrap().into_bytes().as_ref(),
        body.as_slice()
    );

    c.copy_object()
        .bucket("bkt2")
        .key("dst2")
        .copy_source("bkt/src")
        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
        .content_type("application/json")
        .metadata("n", "2")
        .send()
        .await
        .unwrap();
    let got = c
        .head_object()
        .bucket("bkt2")
        .key("dst2")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("application/json"));
    let md = got.metadata().unwrap();
    assert_eq!(
        (md.get("m"), md.get("n").map(String::as_str)),
        (None, Some("2"))
    );

    // Copy onto itself needs REPLACE.
    let e = c
        .copy_object()
        .bucket("bkt")
        .key("src")
        .copy_source("bkt/src")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");

    let e = c
        .copy_object()
        .bucket("bkt2")
        .key("dst3")
        .copy_source("bkt/src")
        .copy_source_if_match("\"wrong\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    c.copy_object()
        .bucket("bkt2")
        .key("dst3")
        .copy_source("bkt/src")
        .copy_source_if_match(put.e_tag().unwrap())
        .send()
        .await
        .unwrap();
    let e = c
        .copy_object()
        .bucket("bkt2")
        .key("dst4")
        .copy_source("bkt/missing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
    // Keys needing URL-encoding in the copy source.
    c.put_object()
        .bucket("bkt")
        .key("a b/ü+")
        .body(b"z".to_vec().into())
        .send()
        .await
        .unwrap();
    c.copy_object()
        .bucket("bkt2")
        .key("enc")
        .copy_source("bkt/a%20b/%C3%BC%2B")
        .send()
        .await
        .unwrap();
    assert_eq!(s.object_data("bkt2", "enc").await.unwrap().as_ref(), b"z");
}

#[tokio::test]
async fn delete_objects() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    for k in ["a", "bkt", "c"] {
        c.put_object()
            .bucket("bkt")
            .key(k)
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let del = Delete::builder()
        .objects(ObjectIdentifier::builder().key("a").build().unwrap())
        .objects(
            ObjectIdentifier::builder()
                .key("bkt")
                .version_id("null")
                .build()
                .unwrap(),
        )
        .objects(ObjectIdentifier::builder().key("missing").build().unwrap())
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
    assert_eq!(deleted, ["a", "bkt", "missing"]);
    assert!(out.errors().is_empty());
    assert_eq!(s.object_count("bkt").await, 1);
}

#[tokio::test]
async fn presigned_get_with_plain_http() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    // Large enough to span several chunks of a store's chunker.
    let body = data(2 * 1024 * 1024 + 3, 6);
    c.put_object()
        .bucket("bkt")
        .key("p/q r")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let url = c
        .get_object()
        .bucket("bkt")
        .key("p/q r")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let (st, h, b) = raw_request("GET", url.uri(), &[], vec![]).await;
    assert_eq!(st, 200);
    assert!(b == body);
    assert!(h.contains_key("x-amz-request-id"));
    let md5 = format!("\"{}\"", hex::encode(Md5::digest(&body)));
    assert_eq!(h["etag"], md5.as_str());

    // The same with a bare socket, as curl or wget would send it (read to EOF).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let uri: http::Uri = url.uri().parse().unwrap();
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            uri.path_and_query().unwrap(),
            s.addr
        );
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), sock.read_to_end(&mut resp))
            .await
            .unwrap()
            .unwrap();
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&resp[..split]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(resp[split + 4..] == body[..], "raw body is byte-identical");
    }

    // Tampering breaks the signature.
    let bad = url.uri().replace("p/q%20r", "p/other");
    let (st, _, b) = raw_request("GET", &bad, &[], vec![]).await;
    assert_eq!(st, 403);
    assert!(String::from_utf8_lossy(&b).contains("SignatureDoesNotMatch"));

    // More than a week is refused outright.
    let long = url
        .uri()
        .replace("X-Amz-Expires=300", "X-Amz-Expires=604801");
    assert_ne!(long, url.uri());
    let (st, _, b) = raw_request("GET", &long, &[], vec![]).await;
    assert_eq!(st, 400);
    assert!(
        String::from_utf8_lossy(&b).contains("AuthorizationQueryParametersError"),
        "{}",
        String::from_utf8_lossy(&b)
    );
}

/// If-None-Match with ETags and If-Match on a missing key, on PutObject and
/// on CompleteMultipartUpload (one-part uploads: a last part may be small).
#[tokio::test]
async fn conditional_writes_with_etags() {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let put = |key: &'static str, body: &'static [u8]| {
        c.put_object()
            .bucket("bkt")
            .key(key)
            .body(body.to_vec().into())
    };
    let e = put("k", b"v1").if_match("*").send().await.unwrap_err();
    assert_eq!((status(&e), code(&e).as_str()), (Some(404), "NoSuchKey"));
    let e = put("k", b"v1")
        .if_match("\"0123\"")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
    // A missing object matches no ETag: If-None-Match passes.
    let v1 = put("k", b"v1")
        .if_none_match("\"0123\"")
        .send()
        .await
        .unwrap();
    let etag = v1.e_tag().unwrap().to_owned();
    let e = put("k", b"v2")
        .if_none_match(&etag)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        (status(&e), code(&e).as_str()),
        (Some(412), "PreconditionFailed")
    );
    let e = put("k", b"v2")
        .if_none_match(format!("\"aaaa\", {etag}"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    assert_eq!(s.object_data("bkt", "k").await.unwrap().as_ref(), b"v1");
    put("k", b"v2")
        .if_none_match("\"aaaa\"")
        .send()
        .await
        .unwrap();
    assert_eq!(s.object_data("bkt", "k").await.unwrap().as_ref(), b"v2");

    // CompleteMultipartUpload checks the same conditions at commit.
    let complete = |key: &'static str| {
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
            let part = c
                .upload_part()
                .bucket("bkt")
                .key(key)
                .upload_id(&id)
                .part_number(1)
                .body(b"multi".to_vec().into())
                .send()
                .await
                .unwrap();
            let done = CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(part.e_tag().unwrap())
                        .build(),
                )
                .build();
            c.complete_multipart_upload()
                .bucket("bkt")
                .key(key)
                .upload_id(id)
                .multipart_upload(done)
        }
    };
    let e = complete("fresh")
        .await
        .if_match("*")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
    let cur = c.head_object().bucket("bkt").key("k").send().await.unwrap();
    let e = complete("k")
        .await
        .if_none_match(cur.e_tag().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "PreconditionFailed");
    assert_eq!(s.object_data("bkt", "k").await.unwrap().as_ref(), b"v2");
    complete("k")
        .await
        .if_match(cur.e_tag().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(s.object_data("bkt", "k").await.unwrap().as_ref(), b"multi");
}

/// User metadata: RFC 2047 words are decoded before they are stored;
/// values that are not printable ASCII go back out as one UTF-8 word.
#[tokio::test]
async fn metadata_encoded_words() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    c.put_object()
        .bucket("bkt")
        .key("k")
        .metadata("ascii", "=?UTF-8?B?aGVsbG8=?=")
        .metadata("accents", "=?UTF-8?Q?caf=C3=A9?=")
        .metadata("split", "=?UTF-8?B?w6k=?= =?UTF-8?B?w6g=?=")
        .metadata("plain", "as is =? not a word")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let head = c.head_object().bucket("bkt").key("k").send().await.unwrap();
    let m = head.metadata().unwrap();
    let get = |k: &str| m.get(k).map(String::as_str);
    assert_eq!(get("ascii"), Some("hello"));
    assert_eq!(get("accents"), Some("=?UTF-8?B?Y2Fmw6k=?="));
    assert_eq!(get("split"), Some("=?UTF-8?B?w6nDqA==?="));
    assert_eq!(get("plain"), Some("as is =? not a word"));

    // Raw UTF-8 in a header (some clients send it) round-trips the same way.
    let (st, _, b) = crate::signed_request_with(
        "PUT",
        s.addr,
        "/bkt/raw",
        &[("x-amz-meta-name", "日本語")],
        None,
        b"y".to_vec(),
    )
    .await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let head = c
        .head_object()
        .bucket("bkt")
        .key("raw")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata().unwrap().get("name").map(String::as_str),
        Some("=?UTF-8?B?5pel5pys6Kqe?=")
    );
}

/// PUT with `Transfer-Encoding: chunked` and no Content-Length.
#[tokio::test]
async fn put_without_content_length() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    // Past the 8 MiB kept in memory: the rest is spooled to a file.
    let pieces: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100_003]).collect();
    let whole = pieces.concat();
    let (st, h, b) = crate::signed_chunked_put(s.addr, "/bkt/streamed", pieces).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    let etag = h.get("etag").unwrap().to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", hex::encode(Md5::digest(&whole))));
    let got = s.object_data("bkt", "streamed").await.unwrap();
    assert_eq!(got.len(), whole.len());
    assert!(got == whole);
    // curl --aws-sigv4 signs Transfer-Encoding too; it must still verify.
    let file = std::env::temp_dir().join(format!("strato-chunked-{}", std::process::id()));
    std::fs::write(&file, &whole).unwrap();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{}:{}", crate::AK, crate::SK))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .args(["-H", "Transfer-Encoding: chunked", "-T"])
        .arg(&file)
        .arg(format!("http://{}/bkt/curl", s.addr))
        .output()
        .await
        .expect("curl (scripts/test.sh installs it)");
    let _ = std::fs::remove_file(&file);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    assert!(s.object_data("bkt", "curl").await.unwrap() == whole);
    // An empty chunked body is an empty object.
    let (st, _, b) = crate::signed_chunked_put(s.addr, "/bkt/empty", vec![]).await;
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
    assert!(s.object_data("bkt", "empty").await.unwrap().is_empty());
}
