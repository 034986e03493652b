use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::{Digest, Md5};

use crate::{bucket, code, data, signed_request, Server};

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
