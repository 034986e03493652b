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
//! POST /chunks?put                     body: frames (see chunk_api::frames); all stored, durable
//! POST /chunks?get                     body: hex ids; answer: frames of the held ones
//! POST /chunks?claim&group=G           body: hex ids; answer: those this caller won for
//!                                      migration group G (first claimant wins, atomic)
//! GET  /chunks/manifest/{bucket}/{key} JSON manifest (see [`ManifestDoc`])
//! POST /chunks/ticket/{bucket}/{key}   body: JSON [`TicketRequest`]; answer: [`TicketGrant`],
//!                                      a session ticket signed by the repository's key,
//!                                      the session's control secret, and the manifest
//!                                      signed over (owner only, like the manifest)
//! POST /chunks/swarm/{bucket}/{key}    body: JSON swarm announce; answer: the swarm's peers,
//!                                      secret and (on join) manifest (owner only; see
//!                                      [`super::swarm`])
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

use chunk_api::frames;
use chunk_api::ids;
use chunk_api::wire::{
    ManifestCommit, ManifestDoc, TicketGrant, TicketRequest, DEFAULT_TICKET_SECS, MAX_CHUNK_LEN,
    MAX_ID_LIST_BODY, MAX_MANIFEST_BODY, MAX_TICKET_REQUEST, MAX_TICKET_SECS,
};

use crate::chunk_api::claims::{ClaimError, ClaimLimits, ClaimTable};
use crate::chunk_api::route::Route;
use crate::chunk_api::{ChunkSource, SourceError};
use crate::store::{ChunkId, Store, StoreError};
use tracing::Instrument;

pub struct ChunkRoute {
    store: Store,
    /// Where the route looks for what its store lacks: a pseudo image
    /// serving as a rack-level upstream fetches missing chunks from its own
    /// upstream, so node-level pseudo images can be fed from it.
    fallback: Option<Arc<dyn ChunkSource>>,
    /// Shrinker's coordination service for migrations into this site.
    claims: Arc<ClaimTable>,
    /// The repository's ticket-signing public keys, one per line (`None`:
    /// this server signs nothing, e.g. an NBD rack upstream).
    trust_keys: Option<Arc<str>>,
    /// Signs session tickets (`None`: this server issues none).
    signer: Option<SessionSigner>,
    /// The swarm tracker (`POST /chunks/swarm/...`).
    tracker: Arc<super::swarm::Tracker>,
}

/// Signs a distribution-session ticket for a manifest, an audience and a
/// lifetime (seconds); returns it with the session's control secret. The
/// digest depends on how each mechanism lists the manifest, which is
/// `distribute`'s business, so the command that starts the server hands the
/// signer in rather than this layer reaching up into `distribute`.
pub type SessionSigner = Arc<
    dyn Fn(&ManifestDoc, strato_trust::Audience, u64) -> (strato_trust::SignedTicket, [u8; 32])
        + Send
        + Sync,
>;

impl ChunkRoute {
    pub fn new(store: Store) -> ChunkRoute {
        ChunkRoute {
            store,
            fallback: None,
            claims: Arc::new(ClaimTable::default()),
            trust_keys: None,
            signer: None,
            tracker: Arc::new(super::swarm::Tracker::default()),
        }
    }

    /// Issue session tickets signed by `signer` at `POST /chunks/ticket/...`.
    pub fn with_signer(mut self, signer: SessionSigner) -> ChunkRoute {
        self.signer = Some(signer);
        self
    }

    /// Publish the repository's signing keys at `GET /chunks/trust-keys`.
    pub fn with_trust_keys(mut self, keys: &str) -> ChunkRoute {
        self.trust_keys = Some(Arc::from(keys));
        self
    }

    /// Claim-table limits from `[migration]` in the config file.
    pub fn with_claim_limits(mut self, limits: ClaimLimits) -> ChunkRoute {
        self.claims = Arc::new(ClaimTable::new(limits));
        self
    }

    pub fn with_fallback(mut self, f: Arc<dyn ChunkSource>) -> ChunkRoute {
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
                    Err(e) => Err(ApiError::Unavailable(e.to_string())),
                },
                None => Err(ApiError::NotFound(m)),
            },
            other => other,
        }
    }
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

#[async_trait]
impl ExtraRoute for ChunkRoute {
    fn matches(&self, _method: &Method, uri: &http::Uri) -> bool {
        Route::matches(uri.path())
    }

    async fn call(
        &self,
        user: Option<User>,
        req: http::Request<ByteStream>,
    ) -> http::Response<ResponseBody> {
        let head = req.method() == Method::HEAD;
        let span =
            tracing::debug_span!("chunk_api", method = %req.method(), path = %req.uri().path());
        let result = async {
            match user {
                None => Err(ApiError::Unsigned),
                Some(user) => match Route::parse(req.method(), req.uri()) {
                    Ok(ep) => self.handle(&user, ep, req.into_body()).await,
                    Err(e) => Err(ApiError::BadRequest(e.to_string())),
                },
            }
        }
        .instrument(span)
        .await;
        match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("chunk API refused: {e}");
                error_response(&e, head)
            }
        }
    }
}

type ApiResult = Result<http::Response<ResponseBody>, ApiError>;

fn json_response(value: &impl serde::Serialize) -> ApiResult {
    let json = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(response(
        StatusCode::OK,
        Bytes::from(json),
        None,
        "application/json",
    ))
}

/// A hex id-per-line request body, bounded.
async fn id_list(body: ByteStream) -> Result<Vec<ChunkId>, ApiError> {
    let data = collect(body, MAX_ID_LIST_BODY).await?;
    ids::decode(&data).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// One handler per endpoint; `handle` only dispatches.
impl ChunkRoute {
    async fn handle(&self, user: &User, ep: Route, body: ByteStream) -> ApiResult {
        match ep {
            Route::HeadChunk(id) => self.head_chunk(id).await,
            Route::GetChunk(id) => self.get_chunk(id).await,
            Route::PutChunk(id) => self.put_chunk(id, body).await,
            Route::Have => self.have(body).await,
            Route::PutBatch => self.put_batch(body).await,
            Route::GetBatch => self.get_batch(body).await,
            Route::Claim { group } => self.claim(group, body).await,
            Route::CommitManifest { bucket, key } => {
                self.commit_manifest(user, bucket, key, body).await
            }
            Route::Manifest { bucket, key } => self.manifest(user, bucket, key).await,
            Route::TrustKeys => self.trust_keys(),
            Route::Ticket { bucket, key } => self.ticket(user, bucket, key, body).await,
            Route::Report { bucket, key } => self.report(user, bucket, key, body).await,
            Route::Swarm { bucket, key } => self.swarm(user, bucket, key, body).await,
        }
    }

    /// A swarm announce: checked (well-formed, bounded, the bucket's owner,
    /// an existing object, a bitmap over its manifest), then recorded.
    async fn swarm(&self, user: &User, bucket: String, key: String, body: ByteStream) -> ApiResult {
        use super::swarm::TrackError;
        let data = collect(body, chunk_api::swarm::MAX_ANNOUNCE_BODY).await?;
        let a: chunk_api::swarm::Announce = serde_json::from_slice(&data)
            .map_err(|e| ApiError::BadRequest(format!("swarm announce: {e}")))?;
        super::swarm::check_announce(&a)
            .map_err(|e| ApiError::BadRequest(format!("swarm announce: {e}")))?;
        let (me, store) = (user.id.clone(), self.store.clone());
        // Reading and hashing the manifest happen off the reactor.
        let (doc, digest) = blocking(move || {
            if store.bucket(&bucket)?.owner != me {
                return Ok(Err(ApiError::Denied));
            }
            let (rec, chunks) = store.manifest(&bucket, &key)?;
            if chunks.len() > chunk_api::swarm::MAX_SWARM_CHUNKS {
                return Ok(Err(ApiError::BadRequest(format!(
                    "{bucket}/{key} has {} chunks; a swarm runs for at most {}",
                    chunks.len(),
                    chunk_api::swarm::MAX_SWARM_CHUNKS
                ))));
            }
            let digest = chunk_api::swarm::manifest_digest(&chunks);
            Ok(Ok((
                ManifestDoc::of_record(&bucket, &key, &rec, &chunks),
                digest,
            )))
        })
        .await??;
        let reply = self
            .tracker
            .announce(&doc, digest, &a, std::time::Instant::now())
            .map_err(|e| match e {
                TrackError::Bad(m) => ApiError::BadRequest(format!("swarm announce: {m}")),
                TrackError::Full(m) => ApiError::Unavailable(m),
            })?;
        json_response(&reply)
    }

    /// A sender's per-node outcome of a session: checked (the bucket's
    /// owner, well-formed, bounded) and acknowledged; the console, which
    /// wraps this route, keeps it for its Transfers page.
    async fn report(
        &self,
        user: &User,
        bucket: String,
        key: String,
        body: ByteStream,
    ) -> ApiResult {
        let data = collect(body, MAX_TICKET_REQUEST).await?;
        let r: chunk_api::SessionReport = serde_json::from_slice(&data)
            .map_err(|e| ApiError::BadRequest(format!("session report: {e}")))?;
        if r.nodes.len() > chunk_api::MAX_REPORT_NODES
            || !matches!(r.kind.as_str(), "chain" | "multicast" | "swarm")
        {
            return Err(ApiError::BadRequest(format!(
                "session report: kind must be chain, multicast or swarm, at most {} nodes",
                chunk_api::MAX_REPORT_NODES
            )));
        }
        let (me, store) = (user.id.clone(), self.store.clone());
        blocking(move || {
            if store.bucket(&bucket)?.owner != me {
                return Ok(Err(ApiError::Denied));
            }
            store.head(&bucket, &key)?;
            Ok(Ok(()))
        })
        .await??;
        Ok(response(
            StatusCode::NO_CONTENT,
            Bytes::new(),
            Some(0),
            "text/plain",
        ))
    }

    fn trust_keys(&self) -> ApiResult {
        let keys = self
            .trust_keys
            .as_ref()
            .ok_or_else(|| ApiError::NotFound("this server publishes no trust keys".into()))?;
        let body = Bytes::from(format!("{keys}\n"));
        let len = body.len();
        Ok(response(StatusCode::OK, body, Some(len), "text/plain"))
    }

    async fn head_chunk(&self, id: ChunkId) -> ApiResult {
        let data = self.read_chunk(id).await?;
        Ok(response(
            StatusCode::OK,
            Bytes::new(),
            Some(data.len()),
            "application/octet-stream",
        ))
    }

    async fn get_chunk(&self, id: ChunkId) -> ApiResult {
        let data = self.read_chunk(id).await?;
        let len = data.len();
        Ok(response(
            StatusCode::OK,
            data,
            Some(len),
            "application/octet-stream",
        ))
    }

    async fn put_chunk(&self, id: ChunkId, body: ByteStream) -> ApiResult {
        let data = collect(body, MAX_CHUNK_LEN).await?;
        if ChunkId::of(&data) != id {
            return Err(ApiError::BadDigest);
        }
        let store = self.store.clone();
        let new = blocking(move || store.put_chunk(&id, &data)).await?;
        let status = if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(response(status, Bytes::new(), None, "text/plain"))
    }

    async fn have(&self, body: ByteStream) -> ApiResult {
        let ids = id_list(body).await?;
        let store = self.store.clone();
        // Block ids cost a metadata read each: off the reactor.
        let out = blocking(move || {
            let held: Vec<ChunkId> = ids.into_iter().filter(|id| store.has_content(id)).collect();
            Ok(ids::encode(&held))
        })
        .await?;
        Ok(response(StatusCode::OK, out, None, "text/plain"))
    }

    async fn put_batch(&self, body: ByteStream) -> ApiResult {
        let data = collect(body, MAX_CHUNK_LEN).await?;
        let frames = frames::parse_frames(&data, MAX_CHUNK_LEN)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let total = frames.len();
        let store = self.store.clone();
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

    async fn get_batch(&self, body: ByteStream) -> ApiResult {
        let ids = id_list(body).await?;
        let store = self.store.clone();
        let out = blocking(move || {
            let mut out = bytes::BytesMut::new();
            for id in &ids {
                match store.read_content(id) {
                    Ok(d) => frames::put_frame(&mut out, id, &d),
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

    async fn claim(&self, group: String, body: ByteStream) -> ApiResult {
        let ids = id_list(body).await?;
        let claims = self.claims.clone();
        let won = tokio::task::spawn_blocking(move || claims.claim(&group, &ids))
            .await
            .map_err(|e| ApiError::Internal(format!("task failed: {e}")))?
            .map_err(|e| match e {
                ClaimError::BadGroup(_) => ApiError::BadRequest(e.to_string()),
                ClaimError::Full(_) => ApiError::Unavailable(e.to_string()),
            })?;
        Ok(response(
            StatusCode::OK,
            ids::encode(&won),
            None,
            "text/plain",
        ))
    }

    async fn commit_manifest(
        &self,
        user: &User,
        bucket: String,
        key: String,
        body: ByteStream,
    ) -> ApiResult {
        let data = collect(body, MAX_MANIFEST_BODY).await?;
        let doc: ManifestCommit = serde_json::from_slice(&data)
            .map_err(|e| ApiError::BadRequest(format!("manifest JSON: {e}")))?;
        let chunks = doc.entries();
        let me = user.id.clone();
        let store = self.store.clone();
        let rec = blocking(move || {
            if store.bucket(&bucket)?.owner != me {
                return Ok(Err(ApiError::Denied));
            }
            store
                .commit_held_chunks(&bucket, &key, "manifest", &chunks)
                .map(Ok)
        })
        .await??;
        json_response(&serde_json::json!({ "size": rec.size, "etag": rec.etag }))
    }

    /// A pseudo image's own manifest first (it serves one object for
    /// others), else the store's, for the bucket's owner only.
    /// A signed ticket for distributing the object's current version to
    /// the audience asked for, with the session's control secret. The
    /// digest is over exactly the list the receivers are sent: the chain
    /// manifest (zero runs cut into pieces) for chain nodes, the store
    /// manifest for a multicast group.
    async fn ticket(
        &self,
        user: &User,
        bucket: String,
        key: String,
        body: ByteStream,
    ) -> ApiResult {
        let sign = self
            .signer
            .clone()
            .ok_or_else(|| ApiError::NotFound("this server issues no session tickets".into()))?;
        let data = collect(body, MAX_TICKET_REQUEST).await?;
        let req: TicketRequest = serde_json::from_slice(&data)
            .map_err(|e| ApiError::BadRequest(format!("ticket request: {e}")))?;
        let addr = |s: &str| {
            s.parse::<std::net::SocketAddr>()
                .map_err(|_| ApiError::BadRequest(format!("{s:?} is not an IP:PORT address")))
        };
        let audience = match (req.nodes, req.group) {
            (Some(nodes), None) if !nodes.is_empty() && nodes.len() <= 4096 => {
                for n in &nodes {
                    addr(n)?;
                }
                strato_trust::Audience::Nodes(nodes)
            }
            (None, Some(group)) if addr(&group)?.ip().is_multicast() => {
                strato_trust::Audience::Group(group)
            }
            (None, Some(group)) => {
                return Err(ApiError::BadRequest(format!(
                    "{group} is not a multicast group address"
                )))
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "give exactly one of nodes (1 to 4096 IP:PORT) or group (ADDR:PORT)".into(),
                ))
            }
        };
        let lifetime = req.lifetime_secs.unwrap_or(DEFAULT_TICKET_SECS);
        if lifetime == 0 || lifetime > MAX_TICKET_SECS {
            return Err(ApiError::BadRequest(format!(
                "ticket lifetime {lifetime} s: 1 to {MAX_TICKET_SECS} allowed"
            )));
        }
        let me = user.id.clone();
        let store = self.store.clone();
        // Reading the manifest and hashing it (a large image has a million
        // entries) happen off the reactor.
        let (doc, signed, secret) = blocking(move || {
            let bk = store.bucket(&bucket)?;
            if bk.owner != me {
                return Ok(Err(ApiError::Denied));
            }
            let (rec, chunks) = store.manifest(&bucket, &key)?;
            let doc = ManifestDoc::of_record(&bucket, &key, &rec, &chunks);
            let (signed, secret) = sign(&doc, audience, lifetime);
            Ok(Ok((doc, signed, secret)))
        })
        .await??;
        let ticket = &signed.ticket;
        // The secret goes back only in this answer to an authenticated
        // caller; it is never logged.
        tracing::info!(user = %user.id, bucket = %ticket.bucket, key = %ticket.key,
            expires_at = ticket.expires_at, "session ticket issued");
        json_response(&TicketGrant {
            ticket: signed.to_text(),
            control_secret: hex::encode(secret),
            expires_at: ticket.expires_at,
            manifest: doc,
        })
    }

    async fn manifest(&self, user: &User, bucket: String, key: String) -> ApiResult {
        if let Some(f) = &self.fallback {
            match f.manifest(&bucket, &key).await {
                Ok(doc) => return json_response(&doc),
                Err(SourceError::NotFound(_)) => {}
                Err(e) => return Err(ApiError::Unavailable(e.to_string())),
            }
        }
        let me = user.id.clone();
        let store = self.store.clone();
        let doc = blocking(move || {
            let b = store.bucket(&bucket)?;
            if b.owner != me {
                return Ok(Err(ApiError::Denied));
            }
            let (rec, chunks) = store.manifest(&bucket, &key)?;
            Ok(Ok(ManifestDoc::of_record(&bucket, &key, &rec, &chunks)))
        })
        .await??;
        json_response(&doc)
    }
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

/// The chunk API route of `strato serve`.
pub fn route(
    store: Store,
    claim_limits: ClaimLimits,
    trust_keys: Option<&str>,
    signer: Option<SessionSigner>,
) -> Arc<dyn ExtraRoute> {
    let mut r = ChunkRoute::new(store).with_claim_limits(claim_limits);
    if let Some(keys) = trust_keys {
        r = r.with_trust_keys(keys);
    }
    if let Some(signer) = signer {
        r = r.with_signer(signer);
    }
    Arc::new(r)
}
