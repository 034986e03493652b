//! aws-sdk-s3 and plain-HTTP helpers for the tests that drive `strato serve`
//! with the Rust SDK (tests/s3_sdk.rs, tests/s3_load.rs).
#![allow(dead_code)]

use std::time::SystemTime;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;

use super::Server;

pub fn client(server: &Server) -> aws_sdk_s3::Client {
    client_with(&server.endpoint, &server.access_key, &server.secret_key)
}

pub fn client_with(endpoint: &str, ak: &str, sk: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
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

/// The HTTP status of an SDK error's response, if there was one.
pub fn status<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Every key in a bucket (ListObjectsV2, following continuation tokens).
pub async fn keys(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10_000 {
        let page = c
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        out.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => return out,
        }
    }
    panic!("listing never ended");
}

pub async fn body_bytes(out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> Vec<u8> {
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

pub fn crc32_b64(data: &[u8]) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    b64(&h.finalize().to_be_bytes())
}

pub fn md5_b64(data: &[u8]) -> String {
    use md5::Digest;
    b64(&md5::Md5::digest(data))
}

pub fn b64(raw: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw)
}

/// A plain HTTP/1.1 request without any AWS logic: status, headers, body.
pub async fn raw_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Vec<u8>) {
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

/// A request signed with SigV4 by hand (for bodies the SDK will not send).
/// `payload` is the `x-amz-content-sha256` value to sign instead of the body
/// hash (e.g. `UNSIGNED-PAYLOAD`).
pub struct Signed<'a> {
    pub host: &'a str,
    pub ak: &'a str,
    pub sk: &'a str,
    pub time: SystemTime,
}

impl<'a> Signed<'a> {
    pub fn new(server: &'a Server) -> Signed<'a> {
        Signed {
            host: &server.host,
            ak: &server.access_key,
            sk: &server.secret_key,
            time: SystemTime::now(),
        }
    }

    /// The signed request, ready to send.
    pub fn build(
        &self,
        method: &str,
        path_and_query: &str,
        extra_headers: &[(&str, &str)],
        payload: Option<&str>,
        body: Vec<u8>,
    ) -> http::Request<Full<bytes::Bytes>> {
        use aws_sigv4::http_request::{
            sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
        };
        let identity: aws_smithy_runtime_api::client::identity::Identity =
            Credentials::new(self.ak, self.sk, None, None, "test").into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(self.time)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let url = format!("http://{}{path_and_query}", self.host);
        let mut builder = http::Request::builder()
            .method(method)
            .uri(&url)
            .header("host", self.host);
        for (k, v) in extra_headers {
            builder = builder.header(*k, *v);
        }
        let mut req = builder
            .body(Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let signable_body = match payload {
            Some(p) => SignableBody::Precomputed(p.to_owned()),
            None => SignableBody::Bytes(&body),
        };
        let headers: Vec<(&str, &str)> = std::iter::once(("host", self.host))
            .chain(extra_headers.iter().copied())
            .collect();
        let signable =
            SignableRequest::new(method, url.clone(), headers.into_iter(), signable_body).unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        instructions.apply_to_request_http1x(&mut req);
        req
    }

    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        extra_headers: &[(&str, &str)],
        payload: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, http::HeaderMap, String) {
        let req = self.build(method, path_and_query, extra_headers, payload, body);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<bytes::Bytes>>();
        let resp = client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

/// `GET /metrics` (no auth) and the value of one unlabelled gauge.
pub async fn gauge(server: &Server, name: &str) -> f64 {
    let (st, _, body) = raw_request(
        "GET",
        &format!("{}/metrics", server.endpoint),
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(st, 200);
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no gauge {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
