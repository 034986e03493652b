use aws_sdk_s3::types::EncodingType;

use crate::{bucket, Server};

const KEYS: &[&str] = &[
    "a/1", "a/2", "a/3/x", "bkt", "c/1", "c/2", "d", "e/f/g", "e/f/h", "z",
];

async fn setup() -> (Server, aws_sdk_s3::Client) {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    for k in KEYS {
        c.put_object()
            .bucket("bkt")
            .key(*k)
            .body(k.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
    }
    (s, c)
}

/// Pages through ListObjectsV2; returns (keys, prefixes, pages).
async fn v2_all(
    c: &aws_sdk_s3::Client,
    prefix: Option<&str>,
    delimiter: Option<&str>,
    max: i32,
    start_after: Option<&str>,
) -> (Vec<String>, Vec<String>, usize) {
    let (mut keys, mut prefixes, mut pages) = (Vec::new(), Vec::new(), 0);
    let mut token: Option<String> = None;
    loop {
        let out = c
            .list_objects_v2()
            .bucket("bkt")
            .set_prefix(prefix.map(str::to_owned))
            .set_delimiter(delimiter.map(str::to_owned))
            .set_start_after(start_after.map(str::to_owned))
            .max_keys(max)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        let n = out.contents().len() + out.common_prefixes().len();
        assert!(n <= max as usize);
        assert_eq!(out.key_count(), Some(n as i32));
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        prefixes.extend(
            out.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
        if out.is_truncated() == Some(true) {
            token = out.next_continuation_token().map(str::to_owned);
            assert!(token.is_some());
        } else {
            assert!(out.next_continuation_token().is_none());
            break;
        }
        assert!(pages < 100);
    }
    (keys, prefixes, pages)
}

#[tokio::test]
async fn v2_flat_and_paged() {
    let (_s, c) = setup().await;
    let (keys, prefixes, pages) = v2_all(&c, None, None, 1000, None).await;
    assert_eq!(keys, KEYS);
    assert!(prefixes.is_empty());
    assert_eq!(pages, 1);
    for max in [1, 2, 3, 9, 10] {
        let (keys, _, pages) = v2_all(&c, None, None, max, None).await;
        assert_eq!(keys, KEYS, "max {max}");
        assert_eq!(pages, KEYS.len().div_ceil(max as usize), "max {max}");
    }
    let (keys, _, _) = v2_all(&c, Some("a/"), None, 2, None).await;
    assert_eq!(keys, ["a/1", "a/2", "a/3/x"]);
    let (keys, _, _) = v2_all(&c, None, None, 3, Some("c/1")).await;
    assert_eq!(keys, ["c/2", "d", "e/f/g", "e/f/h", "z"]);
}

#[tokio::test]
async fn v2_delimiter() {
    let (_s, c) = setup().await;
    let (keys, prefixes, _) = v2_all(&c, None, Some("/"), 1000, None).await;
    assert_eq!(keys, ["bkt", "d", "z"]);
    assert_eq!(prefixes, ["a/", "c/", "e/"]);
    for max in [1, 2, 4] {
        let (k2, p2, _) = v2_all(&c, None, Some("/"), max, None).await;
        assert_eq!((&k2, &p2), (&keys, &prefixes), "max {max}");
    }
    let (keys, prefixes, _) = v2_all(&c, Some("a/"), Some("/"), 1, None).await;
    assert_eq!(keys, ["a/1", "a/2"]);
    assert_eq!(prefixes, ["a/3/"]);
    let (keys, prefixes, _) = v2_all(&c, Some("e/"), Some("/"), 1000, None).await;
    assert!(keys.is_empty());
    assert_eq!(prefixes, ["e/f/"]);

    // Exactly-full last page must not claim truncation.
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .delimiter("/")
        .max_keys(6)
        .send()
        .await
        .unwrap();
    assert_eq!(out.is_truncated(), Some(false));
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .delimiter("/")
        .max_keys(5)
        .send()
        .await
        .unwrap();
    assert_eq!(out.is_truncated(), Some(true));
}

#[tokio::test]
async fn v1_markers() {
    let (_s, c) = setup().await;
    // Without delimiter: clients continue from the last key.
    let mut marker: Option<String> = None;
    let mut keys = Vec::new();
    loop {
        let out = c
            .list_objects()
            .bucket("bkt")
            .max_keys(3)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        assert!(out.contents().iter().all(|o| o.owner().is_some()));
        if out.is_truncated() != Some(true) {
            break;
        }
        marker = out
            .next_marker()
            .map(str::to_owned)
            .or_else(|| keys.last().cloned());
    }
    assert_eq!(keys, KEYS);

    // With delimiter: NextMarker may be a common prefix.
    let mut marker: Option<String> = None;
    let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
    loop {
        let out = c
            .list_objects()
            .bucket("bkt")
            .delimiter("/")
            .max_keys(2)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        prefixes.extend(
            out.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
        if out.is_truncated() != Some(true) {
            break;
        }
        marker = Some(out.next_marker().unwrap().to_owned());
    }
    assert_eq!(keys, ["bkt", "d", "z"]);
    assert_eq!(prefixes, ["a/", "c/", "e/"]);
}

#[tokio::test]
async fn url_encoding() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let key = "dir x/a+b&c<d>é";
    c.put_object()
        .bucket("bkt")
        .key(key)
        .body(b"1".to_vec().into())
        .send()
        .await
        .unwrap();
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let listed = out.contents()[0].key().unwrap();
    assert_eq!(listed, "dir%20x/a%2Bb%26c%3Cd%3E%C3%A9");
    let decoded = percent_encoding::percent_decode_str(listed)
        .decode_utf8()
        .unwrap();
    assert_eq!(decoded, key);
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .delimiter("/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.common_prefixes()[0].prefix(), Some("dir%20x/"));
    // Without encoding-type the XML carries the raw key.
    let out = c.list_objects_v2().bucket("bkt").send().await.unwrap();
    assert_eq!(out.contents()[0].key(), Some(key));
}

#[tokio::test]
async fn object_versions() {
    let (_s, c) = setup().await;
    let out = c.list_object_versions().bucket("bkt").send().await.unwrap();
    let v = out.versions();
    assert_eq!(v.len(), KEYS.len());
    assert!(v
        .iter()
        .all(|v| v.version_id() == Some("null") && v.is_latest() == Some(true)));
    let out = c
        .list_object_versions()
        .bucket("bkt")
        .delimiter("/")
        .max_keys(2)
        .send()
        .await
        .unwrap();
    assert_eq!(out.is_truncated(), Some(true));
    assert_eq!(out.next_key_marker(), Some("bkt"));
    assert_eq!(out.next_version_id_marker(), Some("null"));
}

#[tokio::test]
async fn max_keys_zero() {
    let (_s, c) = setup().await;
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .max_keys(0)
        .send()
        .await
        .unwrap();
    assert!(out.contents().is_empty());
    assert_eq!(out.is_truncated(), Some(false));
}

/// How S3 clients put a key in a URL path: every byte but unreserved
/// characters and `/` escaped.
const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Keys with control characters: `encoding-type=url` escapes them (a
/// newline lists as `%0A`), without it the raw key comes back, carried in
/// the XML so that a parser gives back the same bytes (a carriage return
/// must not be folded into a newline).
#[tokio::test]
async fn control_characters_in_keys() {
    let s = Server::start().await;
    let c = s.client();
    bucket(&c, "bkt").await;
    let keys = ["\n", "a\rb", "tab\there", "sp ace/x"];
    // Raw requests: the SDK refuses a key that is only whitespace.
    for k in keys {
        let path = format!("/bkt/{}", percent_encoding::utf8_percent_encode(k, PATH));
        let (st, _, b) = crate::signed_request("PUT", s.addr, &path, k.as_bytes().to_vec()).await;
        assert_eq!(st, 200, "{k:?}: {}", String::from_utf8_lossy(&b));
    }
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let listed: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, ["%0A", "a%0Db", "sp%20ace/x", "tab%09here"]);
    let out = c
        .list_objects()
        .bucket("bkt")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let listed: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, ["%0A", "a%0Db", "sp%20ace/x", "tab%09here"]);

    let out = c.list_objects_v2().bucket("bkt").send().await.unwrap();
    let listed: Vec<_> = out.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(listed, sorted);
    // The raw XML: no encoding asked, so no percent escapes either.
    let (st, _, body) = crate::signed_request("GET", s.addr, "/bkt?list-type=2", vec![]).await;
    assert_eq!(st, 200);
    let body = String::from_utf8(body).unwrap();
    assert!(
        !body.contains("%0A") && !body.contains("EncodingType"),
        "{body}"
    );
    for k in keys {
        let path = format!("/bkt/{}", percent_encoding::utf8_percent_encode(k, PATH));
        let (st, _, b) = crate::signed_request("GET", s.addr, &path, vec![]).await;
        assert_eq!((st, b.as_slice()), (200, k.as_bytes()));
    }
    // A delimiter and prefix that need escaping come back escaped too.
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .delimiter(" ")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.delimiter(), Some("%20"));
    let p: Vec<_> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(p, ["sp%20"]);
    let out = c
        .list_objects_v2()
        .bucket("bkt")
        .prefix("sp ")
        .delimiter("/")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.prefix(), Some("sp%20"));
    let p: Vec<_> = out
        .common_prefixes()
        .iter()
        .filter_map(|p| p.prefix())
        .collect();
    assert_eq!(p, ["sp%20ace/"]);
}
