use crate::{bucket, code, Server, AK2, SK2};

#[tokio::test]
async fn bucket_lifecycle() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "alpha").await;
    bucket(&c, "beta").await;

    let l = c.list_buckets().send().await.unwrap();
    let names: Vec<_> = l.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    let owner = l.owner().unwrap();
    assert_eq!(owner.id(), Some("alice"));
    assert_eq!(owner.display_name(), Some("alice"));

    c.head_bucket().bucket("alpha").send().await.unwrap();
    let loc = c
        .get_bucket_location()
        .bucket("alpha")
        .send()
        .await
        .unwrap();
    assert!(loc
        .location_constraint()
        .is_none_or(|l| l.as_str().is_empty()));

    c.put_object()
        .bucket("alpha")
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    // us-east-1: creating a bucket you own again is a success that changes
    // nothing (its objects stay).
    c.create_bucket().bucket("alpha").send().await.unwrap();
    assert_eq!(s.object_count("alpha").await, 1);
    let e = c.delete_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(code(&e), "BucketNotEmpty");
    c.delete_object()
        .bucket("alpha")
        .key("k")
        .send()
        .await
        .unwrap();
    c.delete_bucket().bucket("alpha").send().await.unwrap();

    let e = c.head_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(404));
    let e = c.delete_bucket().bucket("alpha").send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchBucket");
}

#[tokio::test]
async fn invalid_bucket_names() {
    let s = Server::start().await;
    let c = s.client();
    for name in ["ab", "Upper-Case", "a..b", "192.168.0.1", "-dash"] {
        let e = c.create_bucket().bucket(name).send().await.unwrap_err();
        let status = e.raw_response().map(|r| r.status().as_u16());
        assert_eq!(status, Some(400), "{name}: {e:?}");
        // Every error names its reason (the aws CLI v1 crashes on an empty one).
        let msg = e
            .as_service_error()
            .and_then(aws_sdk_s3::error::ProvideErrorMetadata::message);
        assert!(msg.is_some_and(|m| !m.trim().is_empty()), "{name}: {e:?}");
    }
    // s3s rejects some names before routing; the ones that reach us say so.
    let e = c.create_bucket().bucket("a..b").send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidBucketName");
}

#[tokio::test]
async fn ownership_is_enforced() {
    let s = Server::start().await;
    let alice = s.client();
    let bob = s.client_with(AK2, SK2);
    bucket(&alice, "alices").await;
    alice
        .put_object()
        .bucket("alices")
        .key("secret")
        .body(b"data".to_vec().into())
        .send()
        .await
        .unwrap();

    let e = bob
        .create_bucket()
        .bucket("alices")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "BucketAlreadyExists");
    let e = bob
        .get_object()
        .bucket("alices")
        .key("secret")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .list_objects_v2()
        .bucket("alices")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .put_object()
        .bucket("alices")
        .key("x")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let e = bob
        .delete_bucket()
        .bucket("alices")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");

    // Copying out of someone else's bucket is a read of that bucket.
    bucket(&bob, "bobs").await;
    let e = bob
        .copy_object()
        .bucket("bobs")
        .key("stolen")
        .copy_source("alices/secret")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");

    let l = bob.list_buckets().send().await.unwrap();
    let names: Vec<_> = l.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["bobs"]);
    assert_eq!(s.object_count("bobs").await, 0);
}

#[tokio::test]
async fn read_only_subresources() {
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
    let acl = c
        .get_object_acl()
        .bucket("bkt")
        .key("k")
        .send()
        .await
        .unwrap();
    assert_eq!(acl.owner().and_then(|o| o.id()), Some("alice"));
    assert_eq!(acl.grants().len(), 1);
    let acl = c.get_bucket_acl().bucket("bkt").send().await.unwrap();
    assert_eq!(
        acl.grants()[0]
            .permission()
            .map(aws_sdk_s3::types::Permission::as_str),
        Some("FULL_CONTROL")
    );
    let e = c
        .get_object_acl()
        .bucket("bkt")
        .key("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
    let v = c
        .get_bucket_versioning()
        .bucket("bkt")
        .send()
        .await
        .unwrap();
    assert!(v.status().is_none());
    let t = c
        .get_object_tagging()
        .bucket("bkt")
        .key("k")
        .send()
        .await
        .unwrap();
    assert!(t.tag_set().is_empty());
    let e = c
        .get_bucket_policy()
        .bucket("bkt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchBucketPolicy");
    let e = c.get_bucket_cors().bucket("bkt").send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchCORSConfiguration");
    let e = c
        .get_bucket_lifecycle_configuration()
        .bucket("bkt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchLifecycleConfiguration");
    let e = c
        .get_bucket_encryption()
        .bucket("bkt")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ServerSideEncryptionConfigurationNotFoundError");
    let e = c
        .get_bucket_policy()
        .bucket("nosuch")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchBucket");
}

#[tokio::test]
async fn large_refused_body_gets_a_clean_answer() {
    let s = Server::start().await;
    bucket(&s.client(), "alices").await;
    let bob = s.client_with(AK2, SK2);
    // Refused before the body is read; the client still sees the error.
    let e = bob
        .put_object()
        .bucket("alices")
        .key("big")
        .body(vec![0u8; 16 << 20].into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    assert_eq!(s.object_count("alices").await, 0);
}

#[tokio::test]
async fn list_buckets_pages() {
    let s = Server::start().await;
    let c = s.client();
    let names = ["img-a", "img-b", "img-c", "img-d", "img-e", "other"];
    for n in names {
        bucket(&c, n).await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination does not end");
        let l = c
            .list_buckets()
            .prefix("img-")
            .max_buckets(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        assert!(l.buckets().len() <= 2);
        seen.extend(
            l.buckets()
                .iter()
                .filter_map(|b| b.name())
                .map(String::from),
        );
        assert_eq!(l.prefix(), Some("img-"));
        match l.continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["img-a", "img-b", "img-c", "img-d", "img-e"]);
    assert_eq!(pages, 3);
    // Without max-buckets everything comes in one page, without a token.
    let all = c.list_buckets().send().await.unwrap();
    assert_eq!(all.buckets().len(), names.len());
    assert_eq!(all.continuation_token(), None);
    for bad in [0, 10_001] {
        let e = c.list_buckets().max_buckets(bad).send().await.unwrap_err();
        assert_eq!(code(&e), "InvalidArgument");
    }
    let e = c
        .list_buckets()
        .continuation_token("!!not-base64!!")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
}
