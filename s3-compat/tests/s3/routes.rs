//! Addressing and non-S3 routes behind the same authentication.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use s3_compat::{ByteStream, ExtraRoute, ResponseBody, S3Config, User};

use crate::{bucket, raw_request, signed_request, signed_request_with, Server};

/// Echoes the caller and the body length; refuses anonymous callers.
struct Echo;

#[async_trait]
impl ExtraRoute for Echo {
    fn matches(&self, _method: &http::Method, uri: &http::Uri) -> bool {
        uri.path().starts_with("/chunks/")
    }

    async fn call(
        &self,
        user: Option<User>,
        req: http::Request<ByteStream>,
    ) -> http::Response<ResponseBody> {
        let Some(user) = user else {
            return http::Response::builder()
                .status(401)
                .body(body(Bytes::new()))
                .unwrap();
        };
        let mut n = 0;
        let mut s = req.into_body();
        while let Some(b) = s.next().await {
            match b {
                Ok(b) => n += b.len(),
                Err(e) => {
                    return http::Response::builder()
                        .status(400)
                        .body(body(Bytes::from(e.to_string())))
                        .unwrap()
                }
            }
        }
        http::Response::new(body(Bytes::from(format!("{} {n}", user.id))))
    }
}

fn body(b: Bytes) -> ResponseBody {
    http_body_util::Full::new(b)
        .map_err(|e| match e {})
        .boxed_unsync()
}

#[tokio::test]
async fn extra_route_is_authenticated() {
    let s = Server::start_full(S3Config::default(), Some(Arc::new(Echo))).await;
    let (st, _, b) = signed_request("PUT", s.addr, "/chunks/abc", vec![1u8; 1234]).await;
    assert_eq!(
        (st, String::from_utf8_lossy(&b).as_ref()),
        (200, "alice 1234")
    );
    let (st, _, _) = raw_request("GET", &format!("{}/chunks/abc", s.url()), &[], vec![]).await;
    assert_eq!(st, 401);
    // A bad signature never reaches the route.
    let (st, _, b) = raw_request(
        "GET",
        &format!("{}/chunks/abc", s.url()),
        &[
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDALICE/20250101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=00"),
            ("x-amz-date", &amz_date(std::time::SystemTime::now())),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ],
        vec![],
    )
    .await;
    assert!(
        st == 403 || st == 400,
        "{st} {}",
        String::from_utf8_lossy(&b)
    );
    // Other paths are still S3.
    bucket(&s.client(), "bkt").await;
    let (st, _, _) = signed_request("GET", s.addr, "/bkt?list-type=2", vec![]).await;
    assert_eq!(st, 200);
}

/// `x-amz-date` format (yyyymmddThhmmssZ) without a date crate.
fn amz_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[tokio::test]
async fn virtual_host_addressing() {
    let config = S3Config {
        virtual_host_domain: Some("s3.test".to_owned()),
        ..Default::default()
    };
    let s = Server::start_with(config).await;
    let c = s.client();
    bucket(&c, "bkt").await;
    c.put_object()
        .bucket("bkt")
        .key("dir/k")
        .body(b"vhost".to_vec().into())
        .send()
        .await
        .unwrap();
    let host = format!("bkt.s3.test:{}", s.addr.port());
    let (st, _, b) =
        signed_request_with("GET", s.addr, "/dir/k", &[("host", &host)], None, vec![]).await;
    assert_eq!((st, b.as_slice()), (200, &b"vhost"[..]));
    let (st, _, b) = signed_request_with(
        "GET",
        s.addr,
        "/?list-type=2",
        &[("host", &host)],
        None,
        vec![],
    )
    .await;
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&b).contains("<Key>dir/k</Key>"));
    // Path style still works, with the base domain or any other host.
    let base = format!("s3.test:{}", s.addr.port());
    let (st, _, b) = signed_request_with(
        "GET",
        s.addr,
        "/bkt/dir/k",
        &[("host", &base)],
        None,
        vec![],
    )
    .await;
    assert_eq!((st, b.as_slice()), (200, &b"vhost"[..]));
    let (st, _, _) = signed_request("GET", s.addr, "/bkt/dir/k", vec![]).await;
    assert_eq!(st, 200);
}
