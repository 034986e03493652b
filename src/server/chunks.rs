//! The chunk API, mounted on the S3 port as an [`ExtraRoute`] so it shares
//! the S3 credentials and SigV4 checks (headers, presigned URLs,
//! aws-chunked bodies):
//!
//! ```text
//! GET  /chunks/{id}                    chunk bytes (verified), 404 if absent
//! HEAD /chunks/{id}                    200 + Content-Length, or 404
//! PUT  /chunks/{id}                    store bytes; 400 BadDigest unless BLAKE3(body) == id
//!                                      201 when new, 200 when already held
//! POST /chunks?have                    body: hex ids, one per line; answer: the held ones
//! POST /chunks?put                     body: frames (see chunk_batch.rs); all stored, durable
//! POST /chunks?get                     body: hex ids; answer: frames of the held ones
//! POST /chunks?claim&group=G           body: hex ids; answer: those this caller won for
//!                                      migration group G (first claimant wins, atomic)
//! GET  /chunks/manifest/{bucket}/{key} JSON manifest (see [`ManifestDoc`])
//! PUT  /chunks/manifest/{bucket}/{key} body: JSON [`ManifestCommit`]; commits an object
//!                                      made of chunks already held here (all must be
//!                                      present, with those lengths; the ETag is the
//!                                      MD5 of the content, computed here)
//! ```
//!
//! Chunks are content-addressed: any authenticated user may read a chunk
//! whose id they know or store one whose bytes match its id. Manifests name
//! the chunks of an object, so they are only shown to the bucket's owner.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use s3_compat::{ByteStream, ExtraRoute, ResponseBody, User};
use serde::{Deserialize, Serialize};

use super::chunk_batch;
use crate::migrate::claims::{ClaimError, ClaimTable};
use crate::store::{ChunkId, ManifestEntry, ObjectRecord, Precondition, Store, StoreError};

/// Largest chunk body accepted by `PUT /chunks/{id}`. The chunkers cut at
/// most a few MiB; this bounds the memory one request can hold.
pub const MAX_CHUNK_LEN: usize = 64 << 20;
/// Bound on a `POST /chunks?have` body (about 1.6 M ids).
const MAX_HAVE_BODY: usize = 128 << 20;

/// An object's manifest as the chunk API serves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestDoc {
    pub version: u32,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub profile: String,
    pub parts: u32,
    /// In order; an all-zero id stands for `len` zero bytes that are never stored.
    pub chunks: Vec<ManifestChunk>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestChunk {
    pub id: String,
    pub len: u32,
}

pub const MANIFEST_VERSION: u32 = 1;

/// Body of `PUT /chunks/manifest/{bucket}/{key}`: the object's chunks, in
/// order. A migration receiver keeps the pages it brought to the site this
/// way, so later migrations and clones can resolve them after the GC grace
/// period: unreferenced chunks are garbage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestCommit {
    pub chunks: Vec<ManifestChunk>,
}

/// Bound on a manifest commit body (about 1.5 M chunks).
const MAX_MANIFEST_BODY: usize = 128 << 20;

/// Where a route looks for what its store lacks: a pseudo image serving
/// as a rack-level upstream fetches missing chunks from its own upstream,
/// so node-level pseudo images can be fed from it.
#[async_trait]
pub trait ChunkFallback: Send + Sync + 'static {
    /// The chunk, if this source can produce it (`Err` = upstream failure).
    async fn chunk(&self, id: ChunkId) -> Result<Option<Bytes>, String>;
    /// The manifest of `bucket/key`, if this source serves that object.
    fn manifest(&self, bucket: &str, key: &str) -> Option<ManifestDoc>;
}

pub struct ChunkRoute {
    store: Store,
    fallback: Option<Arc<dyn ChunkFallback>>,
    /// Shrinker's coordination service for migrations into this site.
    claims: Arc<ClaimTable>,
}

impl ChunkRoute {
    pub fn new(store: Store) -> ChunkRoute {
        ChunkRoute {
            store,
            fallback: None,
            claims: Arc::new(ClaimTable::default()),
        }
    }

    pub fn with_fallback(mut self, f: Arc<dyn ChunkFallback>) -> ChunkRoute {
        self.fallback = Some(f);
        self
    }

    async fn read_chunk(&self, id: ChunkId) -> Result<Bytes, ApiError> {
        let store = self.store.clone();
        match blocking(move || store.read_content(&id)).await {
            Err(ApiError::NotFound(m)) => match &self.fallback {
                Some(f) => match f.chunk(id).await {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => Err(ApiError::NotFound(m)),
                    Err(e) => Err(ApiError::Unavailable(e)),
                },
                None => Err(ApiError::NotFound(m)),
            },
            other => other,
        }
    }
}

/// What a request asks for, parsed before anything is done.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    GetChunk(ChunkId),
    HeadChunk(ChunkId),
    PutChunk(ChunkId),
    Have,
    PutBatch,
    GetBatch,
    Claim { group: String },
    Manifest { bucket: String, key: String },
    CommitManifest { bucket: String, key: String },
}

#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the chunk API needs a signed request")]
    Unsigned,
    #[error("access denied")]
    Denied,
    #[error("{0}")]
    NotFound(String),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("chunk bytes do not hash to the id in the path")]
    BadDigest,
    #[error("{0}")]
    Internal(String),
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::BadDigest => StatusCode::BAD_REQUEST,
            ApiError::Unsigned | ApiError::Denied => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "InvalidRequest",
            ApiError::BadDigest => "BadDigest",
            ApiError::Unsigned | ApiError::Denied => "AccessDenied",
            ApiError::NotFound(_) => "NoSuchChunk",
            ApiError::TooLarge(_) => "EntityTooLarge",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchBucket(_) | StoreError::NoSuchKey { .. } => {
                ApiError::NotFound(e.to_string())
            }
            StoreError::MissingChunk(_) => ApiError::NotFound(e.to_string()),
            StoreError::InvalidKey(_)
            | StoreError::InvalidBucketName { .. }
            | StoreError::InvalidArgument(_) => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

fn parse(method: &Method, uri: &http::Uri) -> Result<Endpoint, ApiError> {
    let path = uri.path();
    let rest = path
        .strip_prefix("/chunks")
        .ok_or_else(|| ApiError::BadRequest("not a chunk API path".into()))?;
    if rest.is_empty() || rest == "/" {
        let have = uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "have" || p.starts_with("have=")));
        let params: Vec<&str> = uri.query().unwrap_or("").split('&').collect();
        if method == Method::POST && params.contains(&"claim") {
            let group = params
                .iter()
                .find_map(|p| p.strip_prefix("group="))
                .ok_or_else(|| ApiError::BadRequest("claim needs group=NAME".into()))?;
            return Ok(Endpoint::Claim {
                group: group.to_string(),
            });
        }
        if method == Method::POST && params.contains(&"put") {
            return Ok(Endpoint::PutBatch);
        }
        if method == Method::POST && params.contains(&"get") {
            return Ok(Endpoint::GetBatch);
        }
        return match (method, have) {
            (&Method::POST, true) => Ok(Endpoint::Have),
            _ => Err(ApiError::BadRequest(
                "use POST /chunks?have or POST /chunks?claim&group=G".into(),
            )),
        };
    }
    let rest = &rest[1..];
    if let Some(obj) = rest.strip_prefix("manifest/") {
        if method != Method::GET && method != Method::PUT {
            return Err(ApiError::BadRequest(
                "manifests are read with GET and committed with PUT".into(),
            ));
        }
        let decoded = percent_encoding::percent_decode_str(obj)
            .decode_utf8()
            .map_err(|_| ApiError::BadRequest("path is not UTF-8".into()))?;
        return match decoded.split_once('/') {
            Some((b, k)) if !b.is_empty() && !k.is_empty() && method == Method::GET => {
                Ok(Endpoint::Manifest {
                    bucket: b.to_string(),
                    key: k.to_string(),
                })
            }
            Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok(Endpoint::CommitManifest {
                bucket: b.to_string(),
                key: k.to_string(),
            }),
            _ => Err(ApiError::BadRequest(
                "expected /chunks/manifest/BUCKET/KEY".into(),
            )),
        };
    }
    let id: ChunkId = rest
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{rest:?} is not a chunk id (64 hex digits)")))?;
    match *method {
        Method::GET => Ok(Endpoint::GetChunk(id)),
        Method::HEAD => Ok(Endpoint::HeadChunk(id)),
        Method::PUT => Ok(Endpoint::PutChunk(id)),
        _ => Err(ApiError::BadRequest(format!(
            "{method} is not allowed on a chunk"
        ))),
    }
}

#[async_trait]
impl ExtraRoute for ChunkRoute {
    fn matches(&self, _method: &Method, uri: &http::Uri) -> bool {
        let p = uri.path();
        p == "/chunks" || p.starts_with("/chunks/")
    }

    async fn call(
        &self,
        user: Option<User>,
        req: http::Request<ByteStream>,
    ) -> http::Response<ResponseBody> {
        let head = req.method() == Method::HEAD;
        let span =
            tracing::debug_span!("chunk_api", method = %req.method(), path = %req.uri().path());
        let _g = span.enter();
        let result = match user {
            None => Err(ApiError::Unsigned),
            Some(user) => match parse(req.method(), req.uri()) {
                Ok(ep) => self.handle(&user, ep, req.into_body()).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("chunk API refused: {e}");
                error_response(&e, head)
            }
        }
    }
}

impl ChunkRoute {
    async fn handle(
        &self,
        user: &User,
        ep: Endpoint,
        body: ByteStream,
    ) -> Result<http::Response<ResponseBody>, ApiError> {
        let store = self.store.clone();
        match ep {
            Endpoint::HeadChunk(id) => {
                let data = self.read_chunk(id).await?;
                Ok(response(
                    StatusCode::OK,
                    Bytes::new(),
                    Some(data.len()),
                    "application/octet-stream",
                ))
            }
            Endpoint::GetChunk(id) => {
                let data = self.read_chunk(id).await?;
                let len = data.len();
                Ok(response(
                    StatusCode::OK,
                    data,
                    Some(len),
                    "application/octet-stream",
                ))
            }
            Endpoint::PutChunk(id) => {
                let data = collect(body, MAX_CHUNK_LEN).await?;
                if ChunkId::of(&data) != id {
                    return Err(ApiError::BadDigest);
                }
                let new = blocking(move || store.put_chunk(&id, &data)).await?;
                let status = if new {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(response(status, Bytes::new(), None, "text/plain"))
            }
            Endpoint::Have => {
                let data = collect(body, MAX_HAVE_BODY).await?;
                let ids = parse_id_lines(&data)?;
                // Block ids cost a metadata read each: off the reactor.
                let out = blocking(move || {
                    let mut out = String::with_capacity(ids.len() * 65);
                    for id in ids.iter().filter(|id| store.has_content(id)) {
                        out.push_str(&id.to_hex());
                        out.push('\n');
                    }
                    Ok(out)
                })
                .await?;
                Ok(response(
                    StatusCode::OK,
                    Bytes::from(out),
                    None,
                    "text/plain",
                ))
            }
            Endpoint::PutBatch => {
                let data = collect(body, MAX_CHUNK_LEN).await?;
                let frames = chunk_batch::parse_frames(&data, MAX_CHUNK_LEN)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                let total = frames.len();
                // A wrong byte is the caller's fault (400) and stores nothing.
                // (put_chunks checks every frame before storing any.)
                let new = blocking(move || match store.put_chunks(&frames) {
                    Err(StoreError::Integrity { .. }) => Ok(None),
                    other => other.map(Some),
                })
                .await?
                .ok_or(ApiError::BadDigest)?;
                Ok(response(
                    StatusCode::OK,
                    Bytes::from(format!("stored {new} new of {total}\n")),
                    None,
                    "text/plain",
                ))
            }
            Endpoint::GetBatch => {
                let data = collect(body, MAX_HAVE_BODY).await?;
                let ids = parse_id_lines(&data)?;
                let out = blocking(move || {
                    let mut out = bytes::BytesMut::new();
                    for id in &ids {
                        match store.read_content(id) {
                            Ok(d) => chunk_batch::put_frame(&mut out, id, &d),
                            Err(StoreError::MissingChunk(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(out.freeze())
                })
                .await?;
                let len = out.len();
                Ok(response(
                    StatusCode::OK,
                    out,
                    Some(len),
                    "application/octet-stream",
                ))
            }
            Endpoint::Claim { group } => {
                let data = collect(body, MAX_HAVE_BODY).await?;
                let ids = parse_id_lines(&data)?;
                let claims = self.claims.clone();
                let won = tokio::task::spawn_blocking(move || claims.claim(&group, &ids))
                    .await
                    .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
                    .map_err(|e| match e {
                        ClaimError::BadGroup(_) => ApiError::BadRequest(e.to_string()),
                        ClaimError::Full(_) => ApiError::Unavailable(e.to_string()),
                    })?;
                let mut out = String::with_capacity(won.len() * 65);
                for id in won {
                    out.push_str(&id.to_hex());
                    out.push('\n');
                }
                Ok(response(
                    StatusCode::OK,
                    Bytes::from(out),
                    None,
                    "text/plain",
                ))
            }
            Endpoint::CommitManifest { bucket, key } => {
                let data = collect(body, MAX_MANIFEST_BODY).await?;
                let doc: ManifestCommit = serde_json::from_slice(&data)
                    .map_err(|e| ApiError::BadRequest(format!("manifest JSON: {e}")))?;
                let chunks = doc
                    .chunks
                    .iter()
                    .map(|c| {
                        let id: ChunkId = c.id.parse().map_err(|_| {
                            ApiError::BadRequest(format!("{:?} is not a chunk id", c.id))
                        })?;
                        Ok(ManifestEntry { id, len: c.len })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()?;
                let me = user.id.clone();
                let rec = blocking(move || {
                    if store.bucket(&bucket)?.owner != me {
                        return Ok(Err(ApiError::Denied));
                    }
                    commit_held_chunks(&store, &bucket, &key, &chunks).map(Ok)
                })
                .await??;
                let json = serde_json::json!({ "size": rec.size, "etag": rec.etag });
                Ok(response(
                    StatusCode::OK,
                    Bytes::from(json.to_string()),
                    None,
                    "application/json",
                ))
            }
            Endpoint::Manifest { bucket, key } => {
                if let Some(doc) = self
                    .fallback
                    .as_ref()
                    .and_then(|f| f.manifest(&bucket, &key))
                {
                    let json =
                        serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
                    return Ok(response(
                        StatusCode::OK,
                        Bytes::from(json),
                        None,
                        "application/json",
                    ));
                }
                let me = user.id.clone();
                let doc = blocking(move || {
                    let b = store.bucket(&bucket)?;
                    if b.owner != me {
                        return Ok(Err(ApiError::Denied));
                    }
                    let (rec, chunks) = store.manifest(&bucket, &key)?;
                    Ok(Ok(ManifestDoc {
                        version: MANIFEST_VERSION,
                        bucket,
                        key,
                        size: rec.size,
                        etag: rec.etag,
                        profile: rec.profile,
                        parts: rec.parts,
                        chunks: chunks
                            .iter()
                            .map(|c| ManifestChunk {
                                id: c.id.to_hex(),
                                len: c.len,
                            })
                            .collect(),
                    }))
                })
                .await??;
                let json =
                    serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
                Ok(response(
                    StatusCode::OK,
                    Bytes::from(json),
                    None,
                    "application/json",
                ))
            }
        }
    }
}

/// Commit `bucket/key` from chunks the store already holds. Every chunk is
/// read back (verified) to compute the object's MD5 ETag, so S3 clients
/// that check ETags against content keep working; a missing chunk or a
/// wrong length fails the commit and changes nothing.
fn commit_held_chunks(
    store: &Store,
    bucket: &str,
    key: &str,
    chunks: &[ManifestEntry],
) -> Result<ObjectRecord, StoreError> {
    use md5::{Digest, Md5};
    let mut md5 = Md5::new();
    let mut size = 0u64;
    for c in chunks {
        if c.id.is_zero_run() {
            md5.update(vec![0u8; c.len as usize]);
        } else {
            let data = store.read_chunk(&c.id)?;
            if data.len() != c.len as usize {
                return Err(StoreError::InvalidArgument(format!(
                    "chunk {} is {} bytes, not {}",
                    c.id,
                    data.len(),
                    c.len
                )));
            }
            md5.update(&data);
        }
        size += c.len as u64;
    }
    let record = ObjectRecord {
        size,
        etag: hex::encode(md5.finalize()),
        modified_ms: 0,
        profile: "manifest".into(),
        attrs: Vec::new(),
        parts: 0,
    };
    store.commit_manifest(bucket, key, record, chunks, &Precondition::None)
}

/// Hex ids, one per line (the body of `have` and `claim`).
fn parse_id_lines(data: &[u8]) -> Result<Vec<ChunkId>, ApiError> {
    let text = std::str::from_utf8(data)
        .map_err(|_| ApiError::BadRequest("ids must be hex text".into()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse()
                .map_err(|_| ApiError::BadRequest(format!("{l:?} is not a chunk id")))
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::store::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::Internal(format!("task failed: {e}"))),
    }
}

async fn collect(mut body: ByteStream, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| ApiError::BadRequest(format!("request body: {e}")))?;
        if buf.len() + piece.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf.freeze())
}

fn response(
    status: StatusCode,
    body: Bytes,
    content_length: Option<usize>,
    content_type: &'static str,
) -> http::Response<ResponseBody> {
    let len = content_length.unwrap_or(body.len());
    let body: ResponseBody = http_body_util::Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}

fn error_response(e: &ApiError, head: bool) -> http::Response<ResponseBody> {
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>\n",
            e.code(),
            xml_escape(&e.to_string())
        ))
    };
    let mut r = response(e.status(), body, None, "application/xml");
    if head {
        r.headers_mut().remove(http::header::CONTENT_LENGTH);
    }
    r
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Share one route between builder and tests.
pub fn route(store: Store) -> Arc<dyn ExtraRoute> {
    Arc::new(ChunkRoute::new(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    #[test]
    fn parses_endpoints() {
        let id = ChunkId::of(b"x");
        let p = format!("/chunks/{}", id.to_hex());
        assert_eq!(
            parse(&Method::GET, &uri(&p)).unwrap(),
            Endpoint::GetChunk(id)
        );
        assert_eq!(
            parse(&Method::PUT, &uri(&p)).unwrap(),
            Endpoint::PutChunk(id)
        );
        assert_eq!(
            parse(&Method::HEAD, &uri(&p)).unwrap(),
            Endpoint::HeadChunk(id)
        );
        assert!(parse(&Method::DELETE, &uri(&p)).is_err());
        assert_eq!(
            parse(&Method::POST, &uri("/chunks?have")).unwrap(),
            Endpoint::Have
        );
        assert!(parse(&Method::GET, &uri("/chunks?have")).is_err());
        assert_eq!(
            parse(&Method::POST, &uri("/chunks?claim&group=g1")).unwrap(),
            Endpoint::Claim { group: "g1".into() }
        );
        assert!(parse(&Method::POST, &uri("/chunks?claim")).is_err());
        assert_eq!(
            parse(&Method::GET, &uri("/chunks/manifest/b/dir/a%20b")).unwrap(),
            Endpoint::Manifest {
                bucket: "b".into(),
                key: "dir/a b".into()
            }
        );
        assert!(parse(&Method::GET, &uri("/chunks/manifest/b")).is_err());
        assert!(parse(&Method::GET, &uri("/chunks/xyz")).is_err());
    }
}
