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
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
    };
    use http_body_util::{BodyExt, Full};
    let identity: aws_smithy_runtime_api::client::identity::Identity =
        Credentials::new(AK, SK, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let url = format!("http://{addr}{path_and_query}");
    // A "host" in extra_headers replaces the address (virtual-host tests).
    let host = extra_headers
        .iter()
        .find(|(k, _)| *k == "host")
        .map_or_else(|| addr.to_string(), |(_, v)| (*v).to_owned());
    let extra_headers: Vec<(&str, &str)> = extra_headers
        .iter()
        .copied()
        .filter(|(k, _)| *k != "host")
        .collect();
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
        Some(p) => SignableBody::Precomputed(p.to_owned()),
        None => SignableBody::Bytes(&body),
    };
    let headers: Vec<(&str, &str)> = std::iter::once(("host", host.as_str()))
        .chain(extra_headers.iter().copied())
        .collect();
    let signable =
        SignableRequest::new(method, url.clone(), headers.into_iter(), signable_body).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut req);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
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
