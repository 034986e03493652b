use crate::{bucket, code, raw_request, Server, AK};

#[tokio::test]
async fn bad_credentials() {
    let s = Server::start().await;
    bucket(&s.client(), "bkt").await;
    let e = s
        .client_with(AK, "wrong-secret")
        .list_buckets()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    let e = s
        .client_with("AKIDNOBODY", "whatever")
        .put_object()
        .bucket("bkt")
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidAccessKeyId");
    let e = s
        .client_with(AK, "wrong-secret")
        .put_object()
        .bucket("bkt")
        .key("k")
        .body(vec![1u8; 100_000].into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "SignatureDoesNotMatch");
    assert_eq!(s.object_count("bkt").await, 0);
}

#[tokio::test]
async fn error_documents() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let url = c
        .get_object()
        .bucket("bkt")
        .key("nope/x")
        .presigned(
            aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(
                60,
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    let (st, h, b) = raw_request("GET", url.uri(), &[], vec![]).await;
    let b = String::from_utf8_lossy(&b);
    assert_eq!(st, 404);
    let id = h.get("x-amz-request-id").unwrap().to_str().unwrap();
    assert!(b.contains("<Code>NoSuchKey</Code>"), "{b}");
    assert!(b.contains("<Resource>/bkt/nope/x</Resource>"), "{b}");
    assert!(b.contains(&format!("<RequestId>{id}</RequestId>")), "{b}");
    assert_eq!(h.get("content-type").unwrap(), "application/xml");

    let e = c
        .get_object()
        .bucket("bkt")
        .key("missing")
        .send()
        .await
        .unwrap_err();
    let meta = aws_sdk_s3::error::ProvideErrorMetadata::meta(e.as_service_error().unwrap());
    assert!(meta.message().is_some());
}

#[tokio::test]
async fn payload_hash_mismatch_stores_nothing() {
    let s = Server::start().await;
    bucket(&s.client(), "bkt").await;
    let wrong = "0".repeat(64);
    let (st, _, b) = crate::signed_request_with(
        "PUT",
        s.addr,
        "/bkt/k",
        &[],
        Some(&wrong),
        b"some body".to_vec(),
    )
    .await;
    let b = String::from_utf8_lossy(&b);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("XAmzContentSHA256Mismatch"), "{b}");
    assert_eq!(s.object_count("bkt").await, 0);
    let (st, _, _) = crate::signed_request("PUT", s.addr, "/bkt/k", b"some body".to_vec()).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn stale_and_expired_signatures() {
    use std::time::{Duration, SystemTime};
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    c.put_object()
        .bucket("bkt")
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();

    let old = SystemTime::now() - Duration::from_secs(3600);
    let (st, _, b) =
        crate::signed_request_at("GET", s.addr, "/bkt/k", &[], None, vec![], old).await;
    let b = String::from_utf8_lossy(&b);
    assert_eq!(st, 403, "{b}");
    assert!(b.contains("<Code>RequestTimeTooSkewed</Code>"), "{b}");

    let cfg = aws_sdk_s3::presigning::PresigningConfig::builder()
        .start_time(old)
        .expires_in(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = c
        .get_object()
        .bucket("bkt")
        .key("k")
        .presigned(cfg)
        .await
        .unwrap();
    let (st, _, b) = raw_request("GET", url.uri(), &[], vec![]).await;
    let b = String::from_utf8_lossy(&b);
    assert_eq!(st, 403, "{b}");
    assert!(b.contains("<Code>AccessDenied</Code>"), "{b}");
    assert!(b.contains("expired"), "{b}");
}

/// A key that is not UTF-8 on the wire (`%FF`) cannot name any object: the
/// request is refused as malformed (400), not answered as a missing key.
#[tokio::test]
async fn key_not_utf8_is_bad_request() {
    let s = Server::start().await;
    bucket(&s.client(), "bkt").await;
    for (method, body) in [
        ("GET", vec![]),
        ("HEAD", vec![]),
        ("PUT", b"x".to_vec()),
        ("DELETE", vec![]),
    ] {
        let (st, _, b) = crate::signed_request(method, s.addr, "/bkt/a%FFb", body).await;
        assert_eq!(st, 400, "{method}: {}", String::from_utf8_lossy(&b));
        if method != "HEAD" {
            let b = String::from_utf8_lossy(&b);
            assert!(b.contains("<Code>InvalidURI</Code>"), "{b}");
            assert!(b.contains("UTF-8"), "{b}");
        }
    }
    assert_eq!(s.object_count("bkt").await, 0);
}
