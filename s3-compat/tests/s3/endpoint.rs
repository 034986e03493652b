//! What the S3 suite needs from an endpoint, whichever server is behind it:
//! SDK error codes, test data, plain and hand-signed HTTP requests. Shared
//! by this crate's harness (the in-memory backend) and strato's
//! `tests/s3_suite.rs` (the real `strato serve`); each harness defines
//! `Server` and the keys `AK`/`SK` (and a second user's `AK2`/`SK2`).

use std::net::SocketAddr;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use hyper_util::rt::TokioExecutor;

use crate::{AK, SK};

/// An SDK client for `url` with path-style addressing.
pub fn client_for(url: &str, ak: &str, sk: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The HTTP status of an SDK error's response, if there was one.
pub fn status<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// The S3 error code of an SDK error.
pub fn code<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(se) => se.code().unwrap_or("<none>").to_owned(),
        None => format!("<not a service error: {e:?}>"),
    }
}

/// Deterministic test data.
pub fn data(n: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678 ^ u32::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// A plain HTTP/1.1 request without any AWS logic; returns status,
/// headers and body.
pub async fn raw_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body))).unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// A SigV4-signed request built by hand (for bodies the SDK will not send).
pub async fn signed_request(
    method: &str,
    addr: SocketAddr,
    path_and_query: &str,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    signed_request_with(method, addr, path_and_query, &[], None, body).await
}

/// Like [`signed_request`], with extra signed headers and, optionally, the
/// `x-amz-content-sha256` value to sign instead of the body hash.
pub async fn signed_request_with(
    method: &str,
    addr: SocketAddr,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
    payload: Option<&str>,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let now = std::time::SystemTime::now();
    signed_request_at(
        method,
        addr,
        path_and_query,
        extra_headers,
        payload,
        body,
        now,
    )
    .await
}

/// Like [`signed_request_with`], signed as of `time`.
pub async fn signed_request_at(
    method: &str,
    addr: SocketAddr,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
    payload: Option<&str>,
    body: Vec<u8>,
    time: std::time::SystemTime,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::Full;
    let (url, host, extra_headers) = request_target(addr, path_and_query, extra_headers);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(&url)
        .header("host", &host);
    for (k, v) in &extra_headers {
        builder = builder.header(*k, *v);
    }
    let mut req = builder
        .body(Full::new(bytes::Bytes::from(body.clone())))
        .unwrap();
    let signable_body = match payload {
        Some(p) => aws_sigv4::http_request::SignableBody::Precomputed(p.to_owned()),
        None => aws_sigv4::http_request::SignableBody::Bytes(&body),
    };
    sign_request(&mut req, &host, &extra_headers, signable_body, time);
    send(req).await
}

/// A signed PUT whose body goes out with `Transfer-Encoding: chunked` and no
/// Content-Length (curl, Java SDK v1 and some Go clients send it so).
pub async fn signed_chunked_put(
    addr: SocketAddr,
    path_and_query: &str,
    pieces: Vec<Vec<u8>>,
) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::{BodyExt, StreamBody};
    // Signed like curl --aws-sigv4 does it: Transfer-Encoding included.
    let te = [("transfer-encoding", "chunked")];
    let (url, host, _) = request_target(addr, path_and_query, &[]);
    let frames = pieces.into_iter().map(|p| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(p)))
    });
    let body = StreamBody::new(futures::stream::iter(frames)).boxed();
    let mut req = http::Request::builder()
        .method("PUT")
        .uri(&url)
        .header("host", &host)
        .header(te[0].0, te[0].1)
        .body(body)
        .unwrap();
    let unsigned = aws_sigv4::http_request::SignableBody::UnsignedPayload;
    sign_request(&mut req, &host, &te, unsigned, std::time::SystemTime::now());
    assert!(!req.headers().contains_key("content-length"));
    send(req).await
}

/// The URL, Host and other headers of a request to `addr`; a "host" in
/// `extra_headers` replaces the address (virtual-host tests).
fn request_target<'h>(
    addr: SocketAddr,
    path_and_query: &str,
    extra_headers: &[(&'h str, &'h str)],
) -> (String, String, Vec<(&'h str, &'h str)>) {
    let url = format!("http://{addr}{path_and_query}");
    let host = extra_headers
        .iter()
        .find(|(k, _)| *k == "host")
        .map_or_else(|| addr.to_string(), |(_, v)| (*v).to_owned());
    let rest = extra_headers
        .iter()
        .copied()
        .filter(|(k, _)| *k != "host")
        .collect();
    (url, host, rest)
}

/// Signs `req` (SigV4, alice's key) as of `time`.
fn sign_request<B>(
    req: &mut http::Request<B>,
    host: &str,
    extra_headers: &[(&str, &str)],
    body: aws_sigv4::http_request::SignableBody<'_>,
    time: std::time::SystemTime,
) {
    use aws_sigv4::http_request::{sign, PayloadChecksumKind, SignableRequest, SigningSettings};
    let identity: aws_smithy_runtime_api::client::identity::Identity =
        Credentials::new(AK, SK, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    // As S3 clients sign: the path as sent, encoded once, not normalized.
    settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
    settings.uri_path_normalization_mode =
        aws_sigv4::http_request::UriPathNormalizationMode::Disabled;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers: Vec<(&str, &str)> = std::iter::once(("host", host))
        .chain(extra_headers.iter().copied())
        .collect();
    let url = req.uri().to_string();
    let signable =
        SignableRequest::new(req.method().as_str(), url, headers.into_iter(), body).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(req);
}

async fn send<B>(req: http::Request<B>) -> (u16, http::HeaderMap, Vec<u8>)
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<B>();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

pub async fn bucket(client: &aws_sdk_s3::Client, name: &str) {
    client.create_bucket().bucket(name).send().await.unwrap();
}
