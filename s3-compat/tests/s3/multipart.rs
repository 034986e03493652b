use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart,
};
use base64::Engine as _;
use md5::{Digest, Md5};

use crate::{bucket, code, data, signed_request, signed_request_with, Server};

const MIB: usize = 1 << 20;

fn part(n: i32, etag: &str) -> CompletedPart {
    CompletedPart::builder().part_number(n).e_tag(etag).build()
}

#[tokio::test]
async fn upload_and_complete() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let body = data(11 * MIB + 123, 7);
    let up = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("big")
        .content_type("application/octet-stream")
        .metadata("k", "v")
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

    let chunks: Vec<&[u8]> = body.chunks(5 * MIB).collect();
    let mut parts = Vec::new();
    let mut md5s = Vec::new();
    for (i, ch) in chunks.iter().enumerate() {
        let n = i as i32 + 1;
        let out = c
            .upload_part()
            .bucket("bkt")
            .key("big")
            .upload_id(&id)
            .part_number(n)
            .body(ch.to_vec().into())
            .send()
            .await
            .unwrap();
        let etag = out.e_tag().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", hex::encode(Md5::digest(ch))));
        md5s.extend_from_slice(&Md5::digest(ch));
        parts.push(part(n, &etag));
    }
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("big")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 3);
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("big")
        .upload_id(&id)
        .max_parts(2)
        .send()
        .await
        .unwrap();
    assert_eq!((lp.parts().len(), lp.is_truncated()), (2, Some(true)));
    assert_eq!(lp.next_part_number_marker(), Some("2"));

    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("big")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let expect = format!("\"{}-3\"", hex::encode(Md5::digest(&md5s)));
    assert_eq!(done.e_tag(), Some(expect.as_str()));

    let got = c
        .get_object()
        .bucket("bkt")
        .key("big")
        .send()
        .await
        .unwrap();
    assert_eq!(got.e_tag(), Some(expect.as_str()));
    assert_eq!(
        got.metadata().unwrap().get("k").map(String::as_str),
        Some("v")
    );
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == body.as_slice());
    let got = c
        .get_object()
        .bucket("bkt")
        .key("big")
        .range("bytes=5242870-5242889")
        .send()
        .await
        .unwrap();
    let b = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(b.as_ref(), &body[5_242_870..5_242_890]);

    let lu = c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(lu.uploads().is_empty());
}

#[tokio::test]
async fn complete_errors() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
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
            .body(data(size, n as u8).into())
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
    assert_eq!(s.object_count("bkt").await, 0);

    // Malformed XML, in a request signed by hand.
    let pq = format!("/bkt/k?uploadId={id}");
    let (st, _, b) = signed_request(
        "POST",
        s.addr,
        &pq,
        b"<CompleteMultipartUpload><Part>".to_vec(),
    )
    .await;
    let b = String::from_utf8_lossy(&b);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("<Code>MalformedXML</Code>"), "{b}");
    let (st, _, b) = signed_request("POST", s.addr, &pq, Vec::new()).await;
    let b = String::from_utf8_lossy(&b);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("<Code>MalformedXML</Code>"), "{b}");

    // A valid completion still works afterwards.
    complete(vec![part(2, &etags[1]), part(3, &etags[2])])
        .await
        .unwrap();
    assert_eq!(s.object_count("bkt").await, 1);

    // Aborting.
    let id2 = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("k2")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    c.abort_multipart_upload()
        .bucket("bkt")
        .key("k2")
        .upload_id(&id2)
        .send()
        .await
        .unwrap();
    let e = c
        .list_parts()
        .bucket("bkt")
        .key("k2")
        .upload_id(&id2)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    let e = c
        .upload_part()
        .bucket("bkt")
        .key("k2")
        .upload_id(&id2)
        .part_number(1)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    // An upload id is bound to its key.
    let e = c
        .upload_part()
        .bucket("bkt")
        .key("other")
        .upload_id(&id)
        .part_number(1)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
}

#[tokio::test]
async fn upload_part_copy() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let src = data(6 * MIB, 9);
    c.put_object()
        .bucket("bkt")
        .key("src")
        .body(src.clone().into())
        .send()
        .await
        .unwrap();
    let id = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("dst")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    let p1 = c
        .upload_part_copy()
        .bucket("bkt")
        .key("dst")
        .upload_id(&id)
        .part_number(1)
        .copy_source("bkt/src")
        .copy_source_range(format!("bytes=0-{}", 5 * MIB - 1))
        .send()
        .await
        .unwrap();
    let p2 = c
        .upload_part_copy()
        .bucket("bkt")
        .key("dst")
        .upload_id(&id)
        .part_number(2)
        .copy_source("bkt/src")
        .copy_source_range(format!("bytes={}-{}", 5 * MIB, 6 * MIB - 1))
        .send()
        .await
        .unwrap();
    let e1 = p1.copy_part_result().unwrap().e_tag().unwrap();
    let e2 = p2.copy_part_result().unwrap().e_tag().unwrap();
    let e = c
        .upload_part_copy()
        .bucket("bkt")
        .key("dst")
        .upload_id(&id)
        .part_number(3)
        .copy_source("bkt/src")
        .copy_source_range(format!("bytes=0-{}", 6 * MIB))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidRange");
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("dst")
        .upload_id(&id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(part(1, e1))
                .parts(part(2, e2))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("bkt")
        .key("dst")
        .send()
        .await
        .unwrap();
    assert!(got.e_tag().unwrap().contains('-'));
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == src.as_slice());
}

// ---- flexible checksums and multipart corners (issue 14) -------------------

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn sha256_raw(d: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(d).to_vec()
}

fn crc32_b64(d: &[u8]) -> String {
    b64(&crc32fast::hash(d).to_be_bytes())
}

async fn create(
    c: &aws_sdk_s3::Client,
    key: &str,
    alg: Option<ChecksumAlgorithm>,
    kind: Option<ChecksumType>,
) -> aws_sdk_s3::operation::create_multipart_upload::CreateMultipartUploadOutput {
    c.create_multipart_upload()
        .bucket("bkt")
        .key(key)
        .set_checksum_algorithm(alg)
        .set_checksum_type(kind)
        .send()
        .await
        .unwrap()
}

async fn upload(
    c: &aws_sdk_s3::Client,
    key: &str,
    id: &str,
    n: i32,
    body: &[u8],
    alg: ChecksumAlgorithm,
) -> aws_sdk_s3::operation::upload_part::UploadPartOutput {
    c.upload_part()
        .bucket("bkt")
        .key(key)
        .upload_id(id)
        .part_number(n)
        .checksum_algorithm(alg)
        .body(body.to_vec().into())
        .send()
        .await
        .unwrap()
}

fn completed(parts: Vec<CompletedPart>) -> CompletedMultipartUpload {
    CompletedMultipartUpload::builder()
        .set_parts(Some(parts))
        .build()
}

#[tokio::test]
async fn composite_checksums_through_create_parts_list_complete_and_get() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let p1 = data(5 * MIB, 1);
    let p2 = data(1234, 2);
    let up = create(&c, "sums", Some(ChecksumAlgorithm::Sha256), None).await;
    assert_eq!(up.checksum_algorithm(), Some(&ChecksumAlgorithm::Sha256));
    assert_eq!(up.checksum_type(), Some(&ChecksumType::Composite));
    let id = up.upload_id().unwrap().to_owned();

    let lu = c
        .list_multipart_uploads()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        lu.uploads()[0].checksum_algorithm(),
        Some(&ChecksumAlgorithm::Sha256)
    );
    assert_eq!(
        lu.uploads()[0].checksum_type(),
        Some(&ChecksumType::Composite)
    );

    let o1 = upload(&c, "sums", &id, 1, &p1, ChecksumAlgorithm::Sha256).await;
    let o2 = upload(&c, "sums", &id, 2, &p2, ChecksumAlgorithm::Sha256).await;
    let (s1, s2) = (b64(&sha256_raw(&p1)), b64(&sha256_raw(&p2)));
    assert_eq!(o1.checksum_sha256(), Some(s1.as_str()));
    assert_eq!(o2.checksum_sha256(), Some(s2.as_str()));

    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("sums")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.checksum_algorithm(), Some(&ChecksumAlgorithm::Sha256));
    assert_eq!(lp.checksum_type(), Some(&ChecksumType::Composite));
    let listed: Vec<Option<&str>> = lp.parts().iter().map(|p| p.checksum_sha256()).collect();
    assert_eq!(listed, vec![Some(s1.as_str()), Some(s2.as_str())]);

    let e1 = o1.e_tag().unwrap().to_owned();
    let e2 = o2.e_tag().unwrap().to_owned();
    let with_sums = |a: &str, b: &str| {
        completed(vec![
            CompletedPart::builder()
                .part_number(1)
                .e_tag(&e1)
                .checksum_sha256(a)
                .build(),
            CompletedPart::builder()
                .part_number(2)
                .e_tag(&e2)
                .checksum_sha256(b)
                .build(),
        ])
    };
    // A part checksum that is not the stored one: InvalidPart, upload kept.
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("sums")
        .upload_id(&id)
        .multipart_upload(with_sums(&s1, &s1))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidPart");
    // COMPOSITE needs every part's checksum named.
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("sums")
        .upload_id(&id)
        .multipart_upload(completed(vec![part(1, &e1), part(2, &e2)]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidRequest");

    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("sums")
        .upload_id(&id)
        .multipart_upload(with_sums(&s1, &s2))
        .send()
        .await
        .unwrap();
    let mut raw = sha256_raw(&p1);
    raw.extend(sha256_raw(&p2));
    let composite = format!("{}-2", b64(&sha256_raw(&raw)));
    assert_eq!(done.checksum_sha256(), Some(composite.as_str()));
    assert_eq!(done.checksum_type(), Some(&ChecksumType::Composite));

    let head = c
        .head_object()
        .bucket("bkt")
        .key("sums")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.checksum_sha256(), Some(composite.as_str()));
    assert_eq!(head.checksum_type(), Some(&ChecksumType::Composite));
    let plain = c
        .head_object()
        .bucket("bkt")
        .key("sums")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.checksum_sha256(), None, "only with checksum mode");

    // A part read carries the part's own checksum (the SDK verifies it).
    let got = c
        .get_object()
        .bucket("bkt")
        .key("sums")
        .part_number(2)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(got.parts_count(), Some(2));
    assert_eq!(got.checksum_sha256(), Some(s2.as_str()));
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == p2.as_slice());
}

#[tokio::test]
async fn full_object_crc_checksums() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let p1 = data(5 * MIB, 3);
    let p2 = data(77, 4);
    let whole: Vec<u8> = [p1.as_slice(), p2.as_slice()].concat();

    // SHA256 cannot be FULL_OBJECT, CRC64NVME cannot be COMPOSITE.
    let err = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("x")
        .checksum_algorithm(ChecksumAlgorithm::Sha256)
        .checksum_type(ChecksumType::FullObject)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidRequest");
    let err = c
        .create_multipart_upload()
        .bucket("bkt")
        .key("x")
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .checksum_type(ChecksumType::Composite)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidRequest");

    // CRC32 FULL_OBJECT: the CRC of all the bytes, not of the part CRCs.
    let up = create(
        &c,
        "crc",
        Some(ChecksumAlgorithm::Crc32),
        Some(ChecksumType::FullObject),
    )
    .await;
    assert_eq!(up.checksum_type(), Some(&ChecksumType::FullObject));
    let id = up.upload_id().unwrap().to_owned();
    let o1 = upload(&c, "crc", &id, 1, &p1, ChecksumAlgorithm::Crc32).await;
    let o2 = upload(&c, "crc", &id, 2, &p2, ChecksumAlgorithm::Crc32).await;
    assert_eq!(o1.checksum_crc32(), Some(crc32_b64(&p1).as_str()));
    let parts = completed(vec![
        part(1, o1.e_tag().unwrap()),
        part(2, o2.e_tag().unwrap()),
    ]);
    // The whole-object value sent with Complete must match; and the type
    // must be the one the upload was created with.
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("crc")
        .upload_id(&id)
        .checksum_crc32(crc32_b64(&p1))
        .checksum_type(ChecksumType::FullObject)
        .multipart_upload(parts.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "BadDigest");
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("crc")
        .upload_id(&id)
        .mpu_object_size(whole.len() as i64 + 1)
        .multipart_upload(parts.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        code(&err),
        "InvalidRequest",
        "x-amz-mp-object-size is checked"
    );
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("crc")
        .upload_id(&id)
        .checksum_type(ChecksumType::Composite)
        .multipart_upload(parts.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidRequest");
    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("crc")
        .upload_id(&id)
        .checksum_crc32(crc32_b64(&whole))
        .checksum_type(ChecksumType::FullObject)
        .multipart_upload(parts)
        .send()
        .await
        .unwrap();
    assert_eq!(done.checksum_crc32(), Some(crc32_b64(&whole).as_str()));
    assert_eq!(done.checksum_type(), Some(&ChecksumType::FullObject));
    // GET with checksum mode: the SDK itself validates the body against it.
    let got = c
        .get_object()
        .bucket("bkt")
        .key("crc")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(got.checksum_crc32(), Some(crc32_b64(&whole).as_str()));
    assert_eq!(got.checksum_type(), Some(&ChecksumType::FullObject));
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == whole.as_slice());

    // CRC64NVME defaults to FULL_OBJECT; the expected value is what the SDK
    // computes for a single PUT of the same bytes.
    let put = c
        .put_object()
        .bucket("bkt")
        .key("single")
        .checksum_algorithm(ChecksumAlgorithm::Crc64Nvme)
        .body(whole.clone().into())
        .send()
        .await
        .unwrap();
    let want = put.checksum_crc64_nvme().unwrap().to_owned();
    let up = create(&c, "nvme", Some(ChecksumAlgorithm::Crc64Nvme), None).await;
    assert_eq!(up.checksum_type(), Some(&ChecksumType::FullObject));
    let id = up.upload_id().unwrap().to_owned();
    let o1 = upload(&c, "nvme", &id, 1, &p1, ChecksumAlgorithm::Crc64Nvme).await;
    let o2 = upload(&c, "nvme", &id, 2, &p2, ChecksumAlgorithm::Crc64Nvme).await;
    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("nvme")
        .upload_id(&id)
        .multipart_upload(completed(vec![
            part(1, o1.e_tag().unwrap()),
            part(2, o2.e_tag().unwrap()),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(done.checksum_crc64_nvme(), Some(want.as_str()));
}

#[tokio::test]
async fn part_checksums_over_raw_http() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let up = create(&c, "raw", Some(ChecksumAlgorithm::Crc32), None).await;
    let id = up.upload_id().unwrap().to_owned();
    let body = b"some part bytes".to_vec();
    let path = format!("/bkt/raw?partNumber=1&uploadId={id}");
    // A wrong value: 400 BadDigest and no part stored.
    let (st, _, resp) = signed_request_with(
        "PUT",
        s.addr,
        &path,
        &[("x-amz-checksum-crc32", &crc32_b64(b"other bytes"))],
        None,
        body.clone(),
    )
    .await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&resp));
    assert!(String::from_utf8_lossy(&resp).contains("<Code>BadDigest</Code>"));
    // Another algorithm than the upload's: refused.
    let (st, _, resp) = signed_request_with(
        "PUT",
        s.addr,
        &path,
        &[("x-amz-checksum-sha256", &b64(&sha256_raw(&body)))],
        None,
        body.clone(),
    )
    .await;
    assert_eq!(st, 400);
    assert!(String::from_utf8_lossy(&resp).contains("<Code>InvalidRequest</Code>"));
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("raw")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert!(lp.parts().is_empty());
    // No checksum sent: the part is stored with the upload's algorithm
    // computed by the server, and answers with it.
    let (st, h, _) = signed_request("PUT", s.addr, &path, body.clone()).await;
    assert_eq!(st, 200);
    let want = crc32_b64(&body);
    assert_eq!(
        h.get("x-amz-checksum-crc32").and_then(|v| v.to_str().ok()),
        Some(want.as_str())
    );
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("raw")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts()[0].checksum_crc32(), Some(want.as_str()));
}

#[tokio::test]
async fn reuploaded_part_replaces_checksum_and_etag() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let up = create(&c, "re", Some(ChecksumAlgorithm::Crc32C), None).await;
    let id = up.upload_id().unwrap().to_owned();
    let old = upload(&c, "re", &id, 1, b"first bytes", ChecksumAlgorithm::Crc32C).await;
    let new = upload(&c, "re", &id, 1, b"second bytes", ChecksumAlgorithm::Crc32C).await;
    assert_ne!(old.e_tag(), new.e_tag());
    assert_ne!(old.checksum_crc32_c(), new.checksum_crc32_c());
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("re")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 1);
    assert_eq!(lp.parts()[0].e_tag(), new.e_tag());
    assert_eq!(lp.parts()[0].checksum_crc32_c(), new.checksum_crc32_c());
    let with = |o: &aws_sdk_s3::operation::upload_part::UploadPartOutput| {
        completed(vec![CompletedPart::builder()
            .part_number(1)
            .e_tag(o.e_tag().unwrap())
            .checksum_crc32_c(o.checksum_crc32_c().unwrap())
            .build()])
    };
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("re")
        .upload_id(&id)
        .multipart_upload(with(&old))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidPart");
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("re")
        .upload_id(&id)
        .multipart_upload(with(&new))
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.object_data("bkt", "re").await.unwrap().as_ref(),
        b"second bytes"
    );
}

#[tokio::test]
async fn retried_complete_answers_the_same() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let up = create(&c, "retry", None, None).await;
    let id = up.upload_id().unwrap().to_owned();
    let p1 = data(5 * MIB, 5);
    let o1 = upload(&c, "retry", &id, 1, &p1, ChecksumAlgorithm::Crc32).await;
    let o2 = upload(&c, "retry", &id, 2, b"tail", ChecksumAlgorithm::Crc32).await;
    let both = completed(vec![
        part(1, o1.e_tag().unwrap()),
        part(2, o2.e_tag().unwrap()),
    ]);
    let complete = |parts: CompletedMultipartUpload| {
        c.complete_multipart_upload()
            .bucket("bkt")
            .key("retry")
            .upload_id(&id)
            .multipart_upload(parts)
            .send()
    };
    // Retries racing the first attempt (a client that timed out early):
    // every one answers 200 with the one ETag.
    let (first, r2, r3) = tokio::join!(
        complete(both.clone()),
        complete(both.clone()),
        complete(both.clone())
    );
    let first = first.unwrap();
    assert_eq!(r2.unwrap().e_tag(), first.e_tag());
    assert_eq!(r3.unwrap().e_tag(), first.e_tag());
    let again = complete(both).await.unwrap();
    assert_eq!(again.e_tag(), first.e_tag());
    assert!(first.e_tag().unwrap().ends_with("-2\""));
    // Another part list is not a retry of that completion.
    let err = complete(completed(vec![part(1, o1.e_tag().unwrap())]))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchUpload");
    // Nor is the same list under another key.
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("elsewhere")
        .upload_id(&id)
        .multipart_upload(completed(vec![
            part(1, o1.e_tag().unwrap()),
            part(2, o2.e_tag().unwrap()),
        ]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "NoSuchUpload");
    // A plain-HTTP retry (what a client that lost the answer sends).
    let xml = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{}</ETag></Part>\
         <Part><PartNumber>2</PartNumber><ETag>{}</ETag></Part></CompleteMultipartUpload>",
        o1.e_tag().unwrap(),
        o2.e_tag().unwrap()
    );
    let (st, _, resp) = signed_request(
        "POST",
        s.addr,
        &format!("/bkt/retry?uploadId={id}"),
        xml.into_bytes(),
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        String::from_utf8_lossy(&resp).contains(&first.e_tag().unwrap().replace('"', "&quot;"))
            || String::from_utf8_lossy(&resp).contains(first.e_tag().unwrap())
    );
    assert_eq!(s.object_count("bkt").await, 1);
}

#[tokio::test]
async fn concurrent_part_uploads_last_to_finish_wins() {
    use tokio::sync::mpsc;
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let up = create(&c, "race", None, None).await;
    let id = up.upload_id().unwrap().to_owned();
    let slow = data(2 * MIB, 6);
    let fast = data(MIB, 7);

    // The slow upload starts first and sends half its body, then waits
    // until the fast one has finished.
    let (tx, rx) = mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let slow_req = c
        .upload_part()
        .bucket("bkt")
        .key("race")
        .upload_id(&id)
        .part_number(1)
        .content_length(slow.len() as i64)
        .body(ByteStream::from_body_1_x(body))
        .send();
    let slow_task = tokio::spawn(slow_req);
    let half = slow.len() / 2;
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(
        &slow[..half],
    ))))
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let fast_out = upload(&c, "race", &id, 1, &fast, ChecksumAlgorithm::Crc32).await;
    assert!(
        !slow_task.is_finished(),
        "the slow upload is still in flight"
    );
    for piece in slow[half..].chunks(64 << 10) {
        tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(
            piece,
        ))))
        .await
        .unwrap();
    }
    drop(tx);
    let slow_out = tokio::time::timeout(std::time::Duration::from_secs(60), slow_task)
        .await
        .expect("slow upload finishes")
        .unwrap()
        .unwrap();
    let slow_etag = slow_out.e_tag().unwrap().to_owned();
    assert_eq!(
        slow_etag,
        format!("\"{}\"", hex::encode(Md5::digest(&slow)))
    );
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("race")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts().len(), 1);
    assert_eq!(lp.parts()[0].e_tag(), Some(slow_etag.as_str()));
    let err = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("race")
        .upload_id(&id)
        .multipart_upload(completed(vec![part(1, fast_out.e_tag().unwrap())]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidPart");
    c.complete_multipart_upload()
        .bucket("bkt")
        .key("race")
        .upload_id(&id)
        .multipart_upload(completed(vec![part(1, &slow_etag)]))
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("bkt")
        .key("race")
        .send()
        .await
        .unwrap();
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == slow.as_slice());
}

/// A stream over an mpsc receiver (no tokio-stream dependency needed).
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    // Fused: the HTTP client may poll again after the end.
    futures::StreamExt::fuse(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|v| (v, rx))
    }))
}

#[tokio::test]
async fn part_number_reads() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let parts = [data(5 * MIB, 8), data(5 * MIB, 9), data(1000, 10)];
    let up = create(&c, "mp", None, None).await;
    let id = up.upload_id().unwrap().to_owned();
    let mut done = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let o = upload(&c, "mp", &id, i as i32 + 1, p, ChecksumAlgorithm::Crc32).await;
        done.push(part(i as i32 + 1, o.e_tag().unwrap()));
    }
    let fin = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("mp")
        .upload_id(&id)
        .multipart_upload(completed(done))
        .send()
        .await
        .unwrap();
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut start = 0usize;
    for (i, p) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let got = c
            .get_object()
            .bucket("bkt")
            .key("mp")
            .part_number(n)
            .send()
            .await
            .unwrap();
        assert_eq!(got.parts_count(), Some(3));
        assert_eq!(got.e_tag(), fin.e_tag(), "the whole object's ETag");
        let want_range = format!("bytes {}-{}/{}", start, start + p.len() - 1, total);
        assert_eq!(got.content_range(), Some(want_range.as_str()));
        assert_eq!(got.content_length(), Some(p.len() as i64));
        let b = got.body.collect().await.unwrap().into_bytes();
        assert!(b.as_ref() == p.as_slice(), "part {n}");
        let head = c
            .head_object()
            .bucket("bkt")
            .key("mp")
            .part_number(n)
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_length(), Some(p.len() as i64));
        assert_eq!(head.parts_count(), Some(3));
        start += p.len();
    }
    let err = c
        .get_object()
        .bucket("bkt")
        .key("mp")
        .part_number(4)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidPartNumber");
    assert_eq!(crate::status(&err), Some(416));
    // Status codes over plain HTTP: 206 for a part, 400 for a bad number,
    // and a Range with partNumber is refused.
    let (st, h, _) = signed_request("HEAD", s.addr, "/bkt/mp?partNumber=2", vec![]).await;
    assert_eq!(st, 206);
    assert_eq!(
        h.get("x-amz-mp-parts-count").and_then(|v| v.to_str().ok()),
        Some("3")
    );
    let (st, _, _) = signed_request("GET", s.addr, "/bkt/mp?partNumber=0", vec![]).await;
    assert_eq!(st, 400);
    let (st, _, _) = signed_request_with(
        "GET",
        s.addr,
        "/bkt/mp?partNumber=1",
        &[("range", "bytes=0-9")],
        None,
        vec![],
    )
    .await;
    assert_eq!(st, 400);

    // A copy keeps the part boundaries.
    c.copy_object()
        .bucket("bkt")
        .key("mp-copy")
        .copy_source("bkt/mp")
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("bkt")
        .key("mp-copy")
        .part_number(3)
        .send()
        .await
        .unwrap();
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == parts[2].as_slice());

    // A single-part object: part 1 is all of it, no parts count; others 416.
    c.put_object()
        .bucket("bkt")
        .key("mp")
        .body(b"now a single part".to_vec().into())
        .send()
        .await
        .unwrap();
    let got = c
        .get_object()
        .bucket("bkt")
        .key("mp")
        .part_number(1)
        .send()
        .await
        .unwrap();
    assert_eq!(got.parts_count(), None);
    let b = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(b.as_ref(), b"now a single part");
    let err = c
        .get_object()
        .bucket("bkt")
        .key("mp")
        .part_number(2)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&err), "InvalidPartNumber");
    let err = c
        .head_object()
        .bucket("bkt")
        .key("mp")
        .part_number(2)
        .send()
        .await
        .unwrap_err();
    assert_eq!(crate::status(&err), Some(416));
}

#[tokio::test]
async fn upload_part_copy_into_a_checksum_upload() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let src = data(6 * MIB, 11);
    c.put_object()
        .bucket("bkt")
        .key("src")
        .body(src.clone().into())
        .send()
        .await
        .unwrap();
    let up = create(&c, "dst", Some(ChecksumAlgorithm::Sha256), None).await;
    let id = up.upload_id().unwrap().to_owned();
    let copied = c
        .upload_part_copy()
        .bucket("bkt")
        .key("dst")
        .upload_id(&id)
        .part_number(1)
        .copy_source("bkt/src")
        .copy_source_range(format!("bytes=0-{}", 5 * MIB - 1))
        .send()
        .await
        .unwrap();
    let r = copied.copy_part_result().unwrap();
    let s1 = b64(&sha256_raw(&src[..5 * MIB]));
    assert_eq!(r.checksum_sha256(), Some(s1.as_str()));
    let tail = b"and a tail";
    let o2 = upload(&c, "dst", &id, 2, tail, ChecksumAlgorithm::Sha256).await;
    let lp = c
        .list_parts()
        .bucket("bkt")
        .key("dst")
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(lp.parts()[0].checksum_sha256(), Some(s1.as_str()));
    let done = c
        .complete_multipart_upload()
        .bucket("bkt")
        .key("dst")
        .upload_id(&id)
        .multipart_upload(completed(vec![
            CompletedPart::builder()
                .part_number(1)
                .e_tag(r.e_tag().unwrap())
                .checksum_sha256(&s1)
                .build(),
            CompletedPart::builder()
                .part_number(2)
                .e_tag(o2.e_tag().unwrap())
                .checksum_sha256(o2.checksum_sha256().unwrap())
                .build(),
        ]))
        .send()
        .await
        .unwrap();
    let mut raw = sha256_raw(&src[..5 * MIB]);
    raw.extend(sha256_raw(tail));
    let want = format!("{}-2", b64(&sha256_raw(&raw)));
    assert_eq!(done.checksum_sha256(), Some(want.as_str()));
    let got = c
        .get_object()
        .bucket("bkt")
        .key("dst")
        .part_number(1)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let b = got.body.collect().await.unwrap().into_bytes();
    assert!(b.as_ref() == &src[..5 * MIB]);
}
