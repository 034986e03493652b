//! Integration tests: the real service on 127.0.0.1:0 over an in-memory
//! backend, driven by the real `aws-sdk-s3` client and plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod mem;

mod buckets;
mod errors;
mod list;
mod multipart;
mod objects;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3_compat::{S3Config, S3Metrics, S3Service, StaticCredentials};

pub use mem::MemBackend;

pub const AK: &str = "AKIDALICE";
pub const SK: &str = "alice-secret-key";
pub const AK2: &str = "AKIDBOB";
pub const SK2: &str = "bob-secret-key";

pub struct Server {
    pub addr: SocketAddr,
    pub backend: Arc<MemBackend>,
    pub metrics: Arc<S3Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(S3Config::default()).await
    }

    pub async fn start_with(config: S3Config) -> Self {
        Self::start_full(config, None).await
    }

    pub async fn start_full(
        config: S3Config,
        route: Option<Arc<dyn s3_compat::ExtraRoute>>,
    ) -> Self {
        let backend = Arc::new(MemBackend::new());
        let creds = StaticCredentials::new()
            .with_user("alice", AK, SK)
            .with_user("bob", AK2, SK2);
        let metrics = Arc::new(S3Metrics::new());
        let mut builder =
            S3Service::builder(backend.clone(), Arc::new(creds), config).metrics(metrics.clone());
        if let Some(r) = route {
            builder = builder.extra_route(r);
        }
        let svc = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server {
            addr,
            backend,
            metrics,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_with(AK, SK)
    }

    pub fn client_with(&self, ak: &str, sk: &str) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.url())
            .credentials_provider(Credentials::new(ak, sk, None, None, "test"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
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
