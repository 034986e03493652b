//! The HTTP entry point: wraps the s3s service with our pre-checks (size and
//! presign limits, aws-chunked chunk cap), access control, error documents
//! with request ids, tracing and metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::host::{S3Host, VirtualHost};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Result};
use tracing::Instrument as _;

use crate::adapter::{Adapter, ReqCtx};
use crate::auth::{CredentialStore, User};
use crate::backend::{Backend, BackendError, ByteStream};
use crate::body::{classify_transport, ChunkCap};
use crate::config::S3Config;
use crate::error::{backend_error, default_message, error_xml, parse_error_xml};
use crate::metrics::{MetricsSink, RequestRecord};

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The response body type [`S3Service::handle`] returns.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A non-S3 route served behind the same SigV4 verification (for example a
/// chunk API). Its requests are authenticated exactly like S3 requests —
/// header signatures, presigned URLs, aws-chunked bodies — before
/// [`ExtraRoute::call`] sees them.
#[async_trait]
pub trait ExtraRoute: Send + Sync + 'static {
    /// Whether this route takes the request. Paths must still look like
    /// `/<valid-bucket-name>/...` (e.g. `/chunks/<id>`), since s3s parses
    /// the path before routing.
    fn matches(&self, method: &Method, uri: &http::Uri) -> bool;

    /// Serves a request whose signature was verified. `user` is `None` for
    /// unsigned requests: refuse those unless the route is public.
    async fn call(
        &self,
        user: Option<User>,
        req: http::Request<ByteStream>,
    ) -> http::Response<ResponseBody>;
}

/// The S3 endpoint. Cheap to clone; mount it in any hyper server.
#[derive(Clone)]
pub struct S3Service {
    inner: Arc<Inner>,
}

struct Inner {
    s3s: s3s::service::S3Service,
    config: Arc<S3Config>,
    metrics: Option<Arc<dyn MetricsSink>>,
    next_id: AtomicU64,
}

/// Builder for [`S3Service`].
pub struct S3ServiceBuilder {
    backend: Arc<dyn Backend>,
    creds: Arc<dyn CredentialStore>,
    config: S3Config,
    metrics: Option<Arc<dyn MetricsSink>>,
    route: Option<Arc<dyn ExtraRoute>>,
}

impl S3ServiceBuilder {
    pub fn metrics(mut self, sink: Arc<dyn MetricsSink>) -> Self {
        self.metrics = Some(sink);
        self
    }

    pub fn extra_route(mut self, route: Arc<dyn ExtraRoute>) -> Self {
        self.route = Some(route);
        self
    }

    pub fn build(self) -> S3Service {
        let config = Arc::new(self.config);
        let adapter = Adapter {
            backend: self.backend.clone(),
            creds: self.creds.clone(),
            config: config.clone(),
            completed: Default::default(),
        };
        let mut b = s3s::service::S3ServiceBuilder::new(adapter);
        b.set_auth(Auth {
            creds: self.creds.clone(),
        });
        b.set_access(Access {
            backend: self.backend,
            creds: self.creds.clone(),
            config: config.clone(),
        });
        if let Some(domain) = &config.virtual_host_domain {
            b.set_host(Host {
                domain: domain.to_ascii_lowercase(),
            });
        }
        if let Some(route) = self.route {
            b.set_route(Route {
                route,
                creds: self.creds,
            });
        }
        S3Service {
            inner: Arc::new(Inner {
                s3s: b.build(),
                config,
                metrics: self.metrics,
                next_id: AtomicU64::new(seed()),
            }),
        }
    }
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn header_u64(h: &http::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

fn query_param<'u>(uri: &'u http::Uri, name: &str) -> Option<&'u str> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl S3Service {
    /// A service over `backend`, authenticating with `creds`.
    pub fn new(
        backend: Arc<dyn Backend>,
        creds: Arc<dyn CredentialStore>,
        config: S3Config,
    ) -> Self {
        Self::builder(backend, creds, config).build()
    }

    pub fn builder(
        backend: Arc<dyn Backend>,
        creds: Arc<dyn CredentialStore>,
        config: S3Config,
    ) -> S3ServiceBuilder {
        S3ServiceBuilder {
            backend,
            creds,
            config,
            metrics: None,
            route: None,
        }
    }

    fn request_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:016X}", n.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    /// Serves one HTTP request.
    pub async fn handle<B>(&self, req: http::Request<B>) -> http::Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let t0 = Instant::now();
        let request_id = self.request_id();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!(
            "s3",
            id = %request_id,
            method = %method,
            path = %path,
            op = tracing::field::Empty,
            bucket = tracing::field::Empty,
            key = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        let bytes_in = header_u64(req.headers(), "x-amz-decoded-content-length")
            .or_else(|| header_u64(req.headers(), "content-length"))
            .unwrap_or(0);
        let ctx = ReqCtx::new();
        let resp = self.serve(req, ctx.clone()).instrument(span.clone()).await;
        let resp = finish(resp, &method, &path, &request_id).await;
        let status = resp.status().as_u16();
        let op = ctx.op();
        span.record("op", op.as_str());
        let (bucket, key) = ctx.target();
        if let Some(b) = &bucket {
            span.record("bucket", b.as_str());
        }
        if let Some(k) = &key {
            span.record("key", k.as_str());
        }
        span.record("status", status);
        let latency = t0.elapsed();
        span.in_scope(|| tracing::info!(latency_ms = latency.as_millis() as u64, "request"));
        if let Some(m) = &self.inner.metrics {
            m.record(&RequestRecord {
                op,
                status,
                bytes_in,
                bytes_out: header_u64(resp.headers(), "content-length").unwrap_or(0),
                latency,
            });
        }
        resp
    }

    async fn serve<B>(&self, req: http::Request<B>, ctx: ReqCtx) -> http::Response<s3s::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let config = &self.inner.config;
        if let Some(e) = precheck(&req, config) {
            return error_response(e);
        }
        if let Some(resp) = wrong_region(&req, config) {
            return resp;
        }
        let streaming = req
            .headers()
            .get("x-amz-content-sha256")
            .is_some_and(|v| v.as_bytes().starts_with(b"STREAMING-"));
        let (mut parts, body) = req.into_parts();
        // A HEAD through a URL presigned for GET (QEMU's curl driver probes
        // with HEAD first) is retried as a GET; hyper sends no body for HEAD.
        let head_retry = (parts.method == Method::HEAD
            && query_param(&parts.uri, "X-Amz-Signature").is_some())
        .then(|| {
            let mut r = http::Request::new(s3s::Body::empty());
            *r.method_mut() = Method::GET;
            *r.uri_mut() = parts.uri.clone();
            *r.version_mut() = parts.version;
            *r.headers_mut() = parts.headers.clone();
            r.extensions_mut().insert(ctx.clone());
            r
        });
        parts.extensions.insert(ctx.clone());
        if needs_spool(&parts, streaming) {
            let spooled = match crate::spool::spool(body, config.max_object_size).await {
                Ok(s) => s,
                Err(e) => return error_response(e),
            };
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(spooled.len));
            // Transfer-Encoding stays: clients such as curl sign it.
            return self
                .call_s3s(http::Request::from_parts(parts, spooled.body))
                .await;
        }
        let body = body.map_err(Into::into);
        let body = if streaming {
            s3s::Body::http_body(ChunkCap::new(
                body,
                config.max_signed_chunk_size,
                ctx.0.body_errors.clone(),
            ))
        } else {
            s3s::Body::http_body(body)
        };
        let resp = self.call_s3s(http::Request::from_parts(parts, body)).await;
        let Some(retry) = head_retry else {
            return resp;
        };
        if resp.status() != StatusCode::FORBIDDEN {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let raw = http_body_util::Limited::new(body, 1 << 16)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let signature_mismatch =
            parse_error_xml(&raw).is_some_and(|(code, _)| code == "SignatureDoesNotMatch");
        if signature_mismatch {
            return self.call_s3s(retry).await;
        }
        http::Response::from_parts(parts, s3s::Body::from(raw))
    }

    async fn call_s3s(&self, req: http::Request<s3s::Body>) -> http::Response<s3s::Body> {
        match self.inner.s3s.call(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = ?e, "s3s failed to serve the request");
                error_response(S3Error::with_message(
                    S3ErrorCode::InternalError,
                    "We encountered an internal error. Please try again.",
                ))
            }
        }
    }
}

/// A PUT whose body has no declared length (`Transfer-Encoding: chunked`,
/// no Content-Length, not aws-chunked): s3s and SigV4 need the length, so
/// it is read to its end first (see spool.rs).
fn needs_spool(parts: &http::request::Parts, streaming: bool) -> bool {
    parts.method == Method::PUT
        && !streaming
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && parts
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

fn xml_field(raw: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{name}>"))? + start;
    Some(text[start..end].to_owned())
}

/// The region in a SigV4 credential scope (`AK/DATE/REGION/s3/aws4_request`),
/// from the Authorization header or a presigned URL.
fn credential_region<B>(req: &http::Request<B>) -> Option<String> {
    let scope = match req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        Some(auth) => auth
            .split("Credential=")
            .nth(1)?
            .split([',', ' '])
            .next()?
            .to_owned(),
        None => percent_encoding::percent_decode_str(query_param(req.uri(), "X-Amz-Credential")?)
            .decode_utf8()
            .ok()?
            .into_owned(),
    };
    scope.split('/').nth(2).map(str::to_owned)
}

/// s3cmd signs with its default bucket location "US" until told otherwise.
/// Like AWS, answer a region that cannot be ours with
/// `AuthorizationHeaderMalformed` naming the right one; s3cmd (and other
/// clients) then retry with it.
fn wrong_region<B>(req: &http::Request<B>, config: &S3Config) -> Option<http::Response<s3s::Body>> {
    let region = credential_region(req)?;
    let valid = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        return None;
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AuthorizationHeaderMalformed</Code><Message>{}</Message><Region>{}</Region></Error>",
        crate::error::escape(&format!(
            "The authorization header is malformed; the region '{region}' is wrong; expecting '{}'",
            config.region
        )),
        crate::error::escape(&config.region)
    );
    let mut resp = http::Response::new(s3s::Body::from(body));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    if let Ok(v) = "application/xml".parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    Some(resp)
}

/// Limits s3s does not enforce itself, checked before any body is read.
fn precheck<B>(req: &http::Request<B>, config: &S3Config) -> Option<S3Error> {
    if let Some(v) = query_param(req.uri(), "X-Amz-Expires") {
        match v.parse::<u64>() {
            Ok(n) if n <= config.presign_max_expiry_secs => {}
            _ => {
                return Some(S3Error::with_message(
                    S3ErrorCode::AuthorizationQueryParametersError,
                    format!(
                        "X-Amz-Expires must be less than a week (in seconds) that is {}",
                        config.presign_max_expiry_secs
                    ),
                ))
            }
        }
    }
    let declared = header_u64(req.headers(), "x-amz-decoded-content-length")
        .or_else(|| header_u64(req.headers(), "content-length"));
    if req.method() == Method::PUT && declared.is_some_and(|n| n > config.max_object_size) {
        return Some(S3Error::with_message(
            S3ErrorCode::EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size.",
        ));
    }
    None
}

fn error_response(e: S3Error) -> http::Response<s3s::Body> {
    match e.to_http_response() {
        Ok(r) => r,
        Err(_) => {
            let mut r = http::Response::new(s3s::Body::empty());
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// Error documents carry Resource and RequestId; 304 has no body; a ranged
/// HEAD is a 206; every response carries x-amz-request-id.
async fn finish(
    resp: http::Response<s3s::Body>,
    method: &Method,
    path: &str,
    request_id: &str,
) -> http::Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        parts.headers.insert("x-amz-request-id", v);
    }
    let status = parts.status;
    let body: ResponseBody = if status == StatusCode::NOT_MODIFIED {
        parts.headers.remove(http::header::CONTENT_TYPE);
        parts.headers.remove(http::header::CONTENT_LENGTH);
        empty()
    } else if status.is_client_error() || status.is_server_error() {
        let raw = http_body_util::Limited::new(body, 1 << 16)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let (code, message) = parse_error_xml(&raw).unwrap_or_else(|| {
            (
                status
                    .canonical_reason()
                    .unwrap_or("Error")
                    .replace(' ', ""),
                String::new(),
            )
        });
        let message = if message.trim().is_empty() {
            default_message(&code, status)
        } else {
            message
        };
        let mut doc = error_xml(&code, &message, path, request_id);
        // Keep the Region of a wrong-region answer: clients retry with it.
        if let Some(region) = xml_field(&raw, "Region") {
            doc = doc.replace(
                "</Error>",
                &format!("<Region>{}</Region></Error>", crate::error::escape(&region)),
            );
        }
        parts.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        if *method == Method::HEAD {
            parts.headers.remove(http::header::CONTENT_LENGTH);
            empty()
        } else {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(doc.len()));
            Full::new(Bytes::from(doc))
                .map_err(|e| match e {})
                .boxed_unsync()
        }
    } else {
        if *method == Method::HEAD
            && status == StatusCode::OK
            && parts.headers.contains_key(http::header::CONTENT_RANGE)
        {
            parts.status = StatusCode::PARTIAL_CONTENT;
        }
        body.map_err(|e| -> BoxError { e }).boxed_unsync()
    };
    http::Response::from_parts(parts, body)
}

fn empty() -> ResponseBody {
    http_body_util::Empty::new()
        .map_err(|e| match e {})
        .boxed_unsync()
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for S3Service {
    type Response = http::Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

struct Auth {
    creds: Arc<dyn CredentialStore>,
}

#[async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        self.creds
            .lookup(access_key)
            .map(|c| SecretKey::from(c.secret_key))
            .ok_or_else(|| {
                S3Error::with_message(
                    S3ErrorCode::InvalidAccessKeyId,
                    "The AWS Access Key Id you provided does not exist in our records.",
                )
            })
    }
}

/// Operations anonymous users may perform on anonymous-read buckets.
const READ_OPS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "ListObjects",
    "ListObjectsV2",
    "ListObjectVersions",
    "GetBucketLocation",
];

fn access_denied() -> S3Error {
    S3Error::with_message(S3ErrorCode::AccessDenied, "Access Denied")
}

/// Bucket ownership: a user touches only the buckets they own, plus reads
/// on anonymous-read buckets.
struct Access {
    backend: Arc<dyn Backend>,
    creds: Arc<dyn CredentialStore>,
    config: Arc<S3Config>,
}

#[async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_owned();
        let op = op.as_str();
        let ctx = cx.extensions_mut().get::<ReqCtx>().cloned();
        if let Some(ctx) = &ctx {
            ctx.set_op(op);
        }
        let (bucket, key) = match cx.s3_path() {
            S3Path::Root => (None, None),
            S3Path::Bucket { bucket } => (Some(bucket.to_string()), None),
            S3Path::Object { bucket, key } => (Some(bucket.to_string()), Some(key.to_string())),
        };
        if let Some(ctx) = &ctx {
            ctx.set_target(bucket.as_deref(), key.as_deref());
        }
        let public_read = READ_OPS.contains(&op)
            && bucket
                .as_ref()
                .is_some_and(|b| self.config.anonymous_read_buckets.contains(b));
        let user = match cx.credentials() {
            None if public_read => return Ok(()),
            None => return Err(access_denied()),
            Some(c) => match self.creds.lookup(&c.access_key) {
                Some(cred) => cred.user,
                None => return Err(access_denied()),
            },
        };
        if let Some(ctx) = &ctx {
            ctx.set_user(user.clone());
        }
        let Some(bucket) = bucket else {
            return Ok(());
        };
        if op == "CreateBucket" || public_read {
            return Ok(());
        }
        match self.backend.head_bucket(&bucket).await {
            Ok(info) if info.owner == user.id => Ok(()),
            Ok(_) => Err(access_denied()),
            // The operation itself reports the missing bucket.
            Err(BackendError::NoSuchBucket) => Ok(()),
            Err(e) => Err(backend_error(&e)),
        }
    }
}

/// Virtual-host addressing under one base domain; any other host (an IP,
/// `localhost`, the bare domain) is path style.
struct Host {
    domain: String,
}

impl S3Host for Host {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let lower = name.to_ascii_lowercase();
        if let Some(bucket) = lower
            .strip_suffix(self.domain.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty())
        {
            return Ok(VirtualHost::new(self.domain.as_str()).with_bucket(bucket.to_owned()));
        }
        Ok(VirtualHost::new(name))
    }
}

struct Route {
    route: Arc<dyn ExtraRoute>,
    creds: Arc<dyn CredentialStore>,
}

#[async_trait]
impl s3s::route::S3Route for Route {
    fn is_match(
        &self,
        method: &Method,
        uri: &http::Uri,
        _headers: &http::HeaderMap,
        _ext: &mut http::Extensions,
    ) -> bool {
        self.route.matches(method, uri)
    }

    async fn check_access(&self, _req: &mut s3s::S3Request<s3s::Body>) -> S3Result<()> {
        // The route decides about anonymous requests itself.
        Ok(())
    }

    async fn call(&self, req: s3s::S3Request<s3s::Body>) -> S3Result<s3s::S3Response<s3s::Body>> {
        let user = req
            .credentials
            .as_ref()
            .and_then(|c| self.creds.lookup(&c.access_key))
            .map(|c| c.user);
        if let Some(ctx) = req.extensions.get::<ReqCtx>() {
            ctx.set_op("ExtraRoute");
        }
        let errors = req
            .extensions
            .get::<ReqCtx>()
            .map(|c| c.0.body_errors.clone())
            .unwrap_or_default();
        let body: ByteStream = Box::pin(req.input.map(move |r| {
            r.map_err(|e| {
                let e = errors.get().unwrap_or_else(|| classify_transport(&e));
                errors.set(e.clone());
                e
            })
        }));
        let mut hreq = http::Request::new(body);
        *hreq.method_mut() = req.method;
        *hreq.uri_mut() = req.uri;
        *hreq.headers_mut() = req.headers;
        let resp = self.route.call(user, hreq).await;
        let (parts, body) = resp.into_parts();
        let mut out = s3s::S3Response::new(s3s::Body::http_body_unsync(body));
        out.status = Some(parts.status);
        out.headers = parts.headers;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts() {
        let h = Host {
            domain: "s3.example.com".into(),
        };
        let vh = h.parse_host_header("bkt.s3.example.com:9000").unwrap();
        assert_eq!(vh.bucket(), Some("bkt"));
        let vh = h.parse_host_header("s3.example.com").unwrap();
        assert_eq!(vh.bucket(), None);
        let vh = h.parse_host_header("localhost:9000").unwrap();
        assert_eq!(vh.bucket(), None);
    }

    #[test]
    fn query_params() {
        let u: http::Uri = "/b/k?X-Amz-Expires=700000&x=1".parse().unwrap();
        assert_eq!(query_param(&u, "X-Amz-Expires"), Some("700000"));
        assert_eq!(query_param(&u, "y"), None);
    }
}
