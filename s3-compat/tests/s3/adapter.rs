//! The adapter's contract with its backend, checked on the in-memory
//! backend only: what attributes and checksums reach the backend, the
//! metrics, and configurations other than the default (anonymous buckets,
//! size limits). Everything a client can observe through the endpoint is in
//! the shared modules, which also run against `strato serve`.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
use md5::{Digest, Md5};

use crate::{bucket, code, data, status, Server};

// from buckets.rs
#[tokio::test]
async fn anonymous_access() {
    let mut config = s3_compat::S3Config::default();
    config.anonymous_read_buckets.insert("public".to_owned());
    let s = Server::start_with(config).await;
    let c = s.client();
    bucket(&c, "public").await;
    bucket(&c, "private").await;
    for b in ["public", "private"] {
        c.put_object()
            .bucket(b)
            .key("k")
            .body(b"hello".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let url = s.url();
    let (st, _, body) = crate::raw_request("GET", &format!("{url}/public/k"), &[], vec![]).await;
    assert_eq!((st, body.as_slice()), (200, &b"hello"[..]));
    let (st, _, body) =
        crate::raw_request("GET", &format!("{url}/public?list-type=2"), &[], vec![]).await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("<Key>k</Key>"));
    let (st, _, body) = crate::raw_request("GET", &format!("{url}/private/k"), &[], vec![]).await;
    assert_eq!(st, 403);
    assert!(String::from_utf8_lossy(&body).contains("<Code>AccessDenied</Code>"));
    // Anonymous writes are refused even on public buckets.
    let (st, _, _) =
        crate::raw_request("PUT", &format!("{url}/public/new"), &[], b"x".to_vec()).await;
    assert_eq!(st, 403);
    let (st, _, _) = crate::raw_request("DELETE", &format!("{url}/public/k"), &[], vec![]).await;
    assert_eq!(st, 403);
    let (st, _, _) = crate::raw_request("GET", &format!("{url}/"), &[], vec![]).await;
    assert_eq!(st, 403);
    assert_eq!(s.backend.object_count("public"), 1);
}

// from errors.rs
#[tokio::test]
async fn metrics_are_recorded() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    c.put_object()
        .bucket("bkt")
        .key("k")
        .body(vec![0u8; 1000].into())
        .send()
        .await
        .unwrap();
    c.get_object().bucket("bkt").key("k").send().await.unwrap();
    let _ = c.get_object().bucket("bkt").key("missing").send().await;
    let text = s.metrics.render_prometheus();
    assert!(
        text.contains("s3_requests_total{op=\"PutObject\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("s3_requests_total{op=\"GetObject\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("s3_requests_total{op=\"GetObject\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("s3_bytes_out_total{op=\"GetObject\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("s3_bytes_in_total{op=\"PutObject\"} 1000"),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_uploads_are_refused_early() {
    let config = s3_compat::S3Config {
        max_object_size: 1000,
        ..Default::default()
    };
    let s = Server::start_with(config).await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let e = c
        .put_object()
        .bucket("bkt")
        .key("k")
        .body(vec![0u8; 1001].into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "EntityTooLarge");
    c.put_object()
        .bucket("bkt")
        .key("k")
        .body(vec![0u8; 1000].into())
        .send()
        .await
        .unwrap();
}

// from objects.rs
#[tokio::test]
async fn put_get_head_delete() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let body = data(300_000, 1);
    let put = c
        .put_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .body(body.clone().into())
        .content_type("application/x-test")
        .content_disposition("attachment; filename=\"a.bin\"")
        .cache_control("max-age=60")
        .expires(aws_sdk_s3::primitives::DateTime::from_secs(1_900_000_000))
        .metadata("color", "blue")
        .metadata("strato-chunking", "fixed:65536")
        .send()
        .await
        .unwrap();
    let md5 = hex::encode(Md5::digest(&body));
    assert_eq!(put.e_tag(), Some(format!("\"{md5}\"").as_str()));

    let got = c
        .get_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(got.e_tag(), Some(format!("\"{md5}\"").as_str()));
    assert_eq!(got.content_length(), Some(body.len() as i64));
    assert_eq!(got.content_type(), Some("application/x-test"));
    assert_eq!(
        got.content_disposition(),
        Some("attachment; filename=\"a.bin\"")
    );
    assert_eq!(got.cache_control(), Some("max-age=60"));
    assert_eq!(got.accept_ranges(), Some("bytes"));
    assert_eq!(
        got.content_encoding(),
        None,
        "aws-chunked must not be stored"
    );
    assert_eq!(
        got.metadata().unwrap().get("color").map(String::as_str),
        Some("blue")
    );
    assert_eq!(got.expires_string(), Some("Sun, 17 Mar 2030 17:46:40 GMT"));
    let bytes = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(bytes.as_ref(), body.as_slice());

    let head = c
        .head_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(body.len() as i64));
    assert_eq!(head.accept_ranges(), Some("bytes"));
    assert_eq!(
        head.metadata().unwrap().get("color").map(String::as_str),
        Some("blue")
    );

    // The store sees the chunking choice and clean attributes.
    let attrs = s.backend.object_attrs("bkt", "dir/obj.bin").unwrap();
    assert_eq!(
        attrs
            .user_metadata
            .get("strato-chunking")
            .map(String::as_str),
        Some("fixed:65536")
    );
    assert_eq!(attrs.content_encoding, None);

    c.delete_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .send()
        .await
        .unwrap();
    // Idempotent.
    c.delete_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .send()
        .await
        .unwrap();
    let e = c
        .get_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
    let e = c
        .head_object()
        .bucket("bkt")
        .key("dir/obj.bin")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(404));

    // Empty objects work too.
    c.put_object()
        .bucket("bkt")
        .key("empty")
        .body(Vec::new().into())
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("bkt")
        .key("empty")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_length(), Some(0));
    assert_eq!(got.e_tag(), Some("\"d41d8cd98f00b204e9800998ecf8427e\""));
}

#[tokio::test]
async fn checksums() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let body = data(200_000, 4);

    // The SDK's default CRC32, then explicit other algorithms.
    for alg in [
        None,
        Some(ChecksumAlgorithm::Crc32C),
        Some(ChecksumAlgorithm::Crc64Nvme),
        Some(ChecksumAlgorithm::Sha1),
        Some(ChecksumAlgorithm::Sha256),
    ] {
        let key = format!("k-{alg:?}");
        let mut req = c
            .put_object()
            .bucket("bkt")
            .key(&key)
            .body(body.clone().into());
        if let Some(a) = &alg {
            req = req.checksum_algorithm(a.clone());
        }
        req.send().await.unwrap();
        let attrs = s.backend.object_attrs("bkt", &key).unwrap();
        let name = alg.as_ref().map_or("CRC32", |a| a.as_str());
        assert!(attrs.checksums.contains_key(name), "{key}: {attrs:?}");

        let got = c
            .get_object()
            .bucket("bkt")
            .key(&key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        let returned = [
            got.checksum_crc32(),
            got.checksum_crc32_c(),
            got.checksum_crc64_nvme(),
            got.checksum_sha1(),
            got.checksum_sha256(),
        ];
        assert_eq!(returned.iter().flatten().count(), 1, "{key}");
        // The SDK validates the returned checksum while reading.
        let b = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(b.as_ref(), body.as_slice());

        // Never on a 206.
        let got = c
            .get_object()
            .bucket("bkt")
            .key(&key)
            .range("bytes=0-99")
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        assert!(got.checksum_crc32().is_none() && got.checksum_crc64_nvme().is_none());
        let b = got.body.collect().await.unwrap().into_bytes();
        assert_eq!(b.as_ref(), &body[..100]);
    }
}

#[tokio::test]
async fn streaming_upload_with_trailer_checksum() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let body = data(3 << 20, 8);
    let path = std::env::temp_dir().join(format!(
        "s3-compat-test-{}-{}",
        std::process::id(),
        s.addr.port()
    ));
    std::fs::write(&path, &body).unwrap();
    let stream = ByteStream::from_path(&path).await.unwrap();
    let put = c
        .put_object()
        .bucket("bkt")
        .key("file")
        .body(stream)
        .send()
        .await
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(put.checksum_crc32().is_some());
    // The SDK sent the body aws-chunked with an x-amz-checksum-crc32 trailer.
    assert_eq!(
        s.backend
            .trailer_checksums
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let got = c
        .get_object()
        .bucket("bkt")
        .key("file")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert!(got.checksum_crc32().is_some());
    assert_eq!(got.content_encoding(), None);
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == body.as_slice());
}

/// An aws-chunked body with an unsigned trailer, built by hand.
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

async fn put_chunked(s: &Server, key: &str, body: &[u8], chunk: usize, crc: &str) -> (u16, String) {
    let len = body.len().to_string();
    let wire = chunked(body, chunk, &format!("x-amz-checksum-crc32:{crc}"));
    let (st, _, b) = crate::signed_request_with(
        "PUT",
        s.addr,
        &format!("/bkt/{key}"),
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", &len),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
            ("x-amz-sdk-checksum-algorithm", "CRC32"),
        ],
        Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
        wire,
    )
    .await;
    (st, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test]
async fn trailer_checksum_mismatch_stores_nothing() {
    let s = Server::start().await;
    bucket(&s.client(), "bkt").await;
    let (st, b) = put_chunked(&s, "bad", b"hello world", 4, "AAAAAA==").await;
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("<Code>BadDigest</Code>"), "{b}");
    assert_eq!(s.backend.object_count("bkt"), 0);
    let (st, b) = put_chunked(&s, "good", b"hello world", 4, "DUoRhQ==").await;
    assert_eq!(st, 200, "{b}");
    let attrs = s.backend.object_attrs("bkt", "good").unwrap();
    assert_eq!(
        attrs.checksums.get("CRC32").map(String::as_str),
        Some("DUoRhQ==")
    );
    assert_eq!(attrs.content_encoding, None);
    assert_eq!(
        s.backend.object_data("bkt", "good").unwrap().as_ref(),
        b"hello world"
    );
}

#[tokio::test]
async fn oversized_signed_chunks_are_refused() {
    let config = s3_compat::S3Config {
        max_signed_chunk_size: 1024,
        ..Default::default()
    };
    let s = Server::start_with(config).await;
    bucket(&s.client(), "bkt").await;
    let body = data(5000, 1);
    let mut h = crc32fast::Hasher::new();
    h.update(&body);
    let crc = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        h.finalize().to_be_bytes(),
    );
    let (st, b) = put_chunked(&s, "big-chunks", &body, 2048, &crc).await;
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("<Code>InvalidRequest</Code>"), "{b}");
    assert_eq!(s.backend.object_count("bkt"), 0);
    let (st, b) = put_chunked(&s, "small-chunks", &body, 1024, &crc).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        s.backend
            .object_data("bkt", "small-chunks")
            .unwrap()
            .as_ref(),
        body.as_slice()
    );
}

#[tokio::test]
async fn encoded_metadata_round_trips() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    c.put_object()
        .bucket("bkt")
        .key("k")
        .metadata("name", "=?UTF-8?B?w7xiZXI=?=")
        .metadata("plain", "ascii value")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let attrs = s.backend.object_attrs("bkt", "k").unwrap();
    assert_eq!(
        attrs.user_metadata.get("name").map(String::as_str),
        Some("über")
    );
    let got = c.head_object().bucket("bkt").key("k").send().await.unwrap();
    let md = got.metadata().unwrap();
    assert_eq!(md.get("plain").map(String::as_str), Some("ascii value"));
    let name = md.get("name").unwrap();
    assert!(name.starts_with("=?UTF-8?"), "{name}");
}

// from buckets.rs: outside us-east-1, creating a bucket you already own is
// BucketAlreadyOwnedByYou (409), and the bucket and its objects stay.
#[tokio::test]
async fn recreate_own_bucket_outside_us_east_1() {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = s3_compat::S3Config {
        region: "eu-west-1".to_owned(),
        ..Default::default()
    };
    let s = Server::start_with(config).await;
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(s.url())
        .credentials_provider(Credentials::new(crate::AK, crate::SK, None, None, "test"))
        .force_path_style(true)
        .build();
    let c = aws_sdk_s3::Client::from_conf(conf);
    bucket(&c, "mine").await;
    c.put_object()
        .bucket("mine")
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let e = c.create_bucket().bucket("mine").send().await.unwrap_err();
    assert_eq!(code(&e), "BucketAlreadyOwnedByYou");
    assert_eq!(status(&e), Some(409));
    assert_eq!(s.object_count("mine").await, 1);
}
