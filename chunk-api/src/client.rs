//! Client of the chunk API, signed with SigV4 like any S3 client. Pulls,
//! pseudo images, chains and migrations share it.
//!
//! Every chunk that comes back is checked against its id before a caller
//! sees it: integrity across hops comes from the ids, not from the network.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use strato_store::{ChunkId, ManifestEntry};

use crate::ids;
use crate::route::{Route, KEY_SET};
use crate::wire::{ManifestCommit, ManifestDoc, ManifestError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {0:?}: expected http://HOST:PORT or https://HOST:PORT")]
    Endpoint(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{what}: cannot reach {endpoint}: {err}")]
    Unreachable {
        what: String,
        endpoint: String,
        err: String,
    },
    #[error("{what}: no answer from {endpoint} within {secs} s")]
    Timeout {
        what: String,
        endpoint: String,
        secs: u64,
    },
    #[error("{what}: {status} {message}")]
    Status {
        what: String,
        status: StatusCode,
        message: String,
    },
    #[error("chunk {0} came back with bytes that do not match its id")]
    Integrity(ChunkId),
    #[error("{what}: invalid answer: {why}")]
    Invalid { what: String, why: String },
    #[error("{what}: {err}")]
    Manifest { what: String, err: ManifestError },
    #[error("signing: {0}")]
    Sign(String),
}

impl ClientError {
    /// Whether the object or chunk simply is not there (as opposed to a
    /// transport or server failure worth retrying).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Header pairs and query pairs a signature adds to a request.
type Signed = (Vec<(&'static str, String)>, Vec<(&'static str, String)>);

/// Access key pair for the endpoint.
#[derive(Clone)]
pub struct Keys {
    pub access_key: String,
    pub secret_key: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({}, <secret>)", self.access_key)
    }
}

/// A chunk API endpoint. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct ChunkClient {
    endpoint: String,
    host: String,
    keys: Keys,
    region: String,
    timeout: Duration,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ChunkClient {
    /// A client of `endpoint` (`http://` or `https://`); an https
    /// certificate must chain to the system's roots.
    pub fn new(endpoint: &str, keys: Keys, region: &str) -> Result<ChunkClient> {
        Self::with_ca(endpoint, keys, region, None)
    }

    /// Like [`ChunkClient::new`], with `ca` (a PEM file, e.g. the
    /// `DATA_DIR/tls/ca.pem` of a `--tls-self-signed` server) as the only
    /// trusted root for an `https://` endpoint.
    pub fn with_ca(
        endpoint: &str,
        keys: Keys,
        region: &str,
        ca: Option<&Path>,
    ) -> Result<ChunkClient> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| ClientError::Endpoint(endpoint.clone()))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(ClientError::Endpoint(endpoint)),
        };
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(ClientError::Endpoint(endpoint));
        }
        let host = uri
            .authority()
            .map(std::string::ToString::to_string)
            .ok_or_else(|| ClientError::Endpoint(endpoint.clone()))?;
        if ca.is_some() && !https {
            return Err(ClientError::Tls(format!(
                "--ca given but {endpoint} is not an https:// endpoint"
            )));
        }
        // Plain http endpoints never load the system's roots.
        let roots = if https {
            root_store(ca)?
        } else {
            rustls::RootCertStore::empty()
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(10)));
        conn.enforce_http(false);
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(conn);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn);
        Ok(ChunkClient {
            endpoint,
            host,
            keys,
            region: region.to_string(),
            timeout: Duration::from_secs(60),
            http,
        })
    }

    /// Per-request deadline (connect, send and read the whole answer).
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn settings(&self) -> SigningSettings {
        let mut s = SigningSettings::default();
        // S3 rules: the path is signed as sent (single encoding, no normalisation).
        s.percent_encoding_mode = PercentEncodingMode::Single;
        s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        s
    }

    fn sign_request(
        &self,
        method: &Method,
        url: &str,
        settings: SigningSettings,
        body: SignableBody<'_>,
        expires: Option<Duration>,
    ) -> Result<Signed> {
        let identity: aws_smithy_runtime_api::client::identity::Identity =
            aws_credential_types::Credentials::new(
                &self.keys.access_key,
                &self.keys.secret_key,
                None,
                None,
                "strato",
            )
            .into();
        let mut settings = settings;
        if let Some(e) = expires {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(e);
        }
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| ClientError::Sign(e.to_string()))?
            .into();
        let headers = [("host", self.host.as_str())];
        let signable = SignableRequest::new(method.as_str(), url, headers.into_iter(), body)
            .map_err(|e| ClientError::Sign(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| ClientError::Sign(e.to_string()))?
            .into_parts();
        let (h, q) = instructions.into_parts();
        Ok((
            h.into_iter()
                .map(|h| (h.name(), h.value().to_string()))
                .collect(),
            q.into_iter().map(|(k, v)| (k, v.into_owned())).collect(),
        ))
    }

    pub(crate) async fn send(
        &self,
        what: &str,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        self.send_with(what, method, path_and_query, body, false)
            .await
    }

    /// `sign_body`: the signature covers the body's hash too (a small body
    /// whose meaning matters, like a ticket's audience).
    pub(crate) async fn send_with(
        &self,
        what: &str,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        sign_body: bool,
    ) -> Result<(StatusCode, Bytes)> {
        let url = format!("{}{}", self.endpoint, path_and_query);
        // Chunk bodies are checked by id on the server; skip hashing them twice.
        let signable = if body.is_empty() {
            SignableBody::Bytes(&[])
        } else if sign_body {
            SignableBody::Bytes(&body)
        } else {
            SignableBody::UnsignedPayload
        };
        let (headers, _) = self.sign_request(&method, &url, self.settings(), signable, None)?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::HOST, &self.host);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Sign(e.to_string()))?;
        let fut = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ClientError::Unreachable {
                    what: what.to_string(),
                    endpoint: self.endpoint.clone(),
                    err: with_tls_hint(chain(&e)),
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Unreachable {
                    what: what.to_string(),
                    endpoint: self.endpoint.clone(),
                    err: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                what: what.to_string(),
                endpoint: self.endpoint.clone(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    pub(crate) fn status_error(what: &str, status: StatusCode, body: &[u8]) -> ClientError {
        let text = String::from_utf8_lossy(body);
        // Error documents are small XML; show their message, not the markup.
        let message = text
            .split_once("<Message>")
            .and_then(|(_, r)| r.split_once("</Message>"))
            .map(|(m, _)| m.to_string())
            .unwrap_or_else(|| text.chars().take(200).collect());
        ClientError::Status {
            what: what.to_string(),
            status,
            message,
        }
    }

    /// The manifest of `bucket/key`, checked: a version this build reads,
    /// and chunks that cover the object's size.
    pub async fn manifest(&self, bucket: &str, key: &str) -> Result<ManifestDoc> {
        let what = format!("manifest of {bucket}/{key}");
        let path = manifest_path(bucket, key);
        let (status, body) = self.send(&what, Method::GET, &path, Bytes::new()).await?;
        if status != StatusCode::OK {
            return Err(Self::status_error(&what, status, &body));
        }
        decode_manifest(&what, &body)
    }

    /// The repository's ticket-signing public keys (`GET /chunks/trust-keys`),
    /// as text, one key per entry: what a node checks distribution tickets
    /// against.
    pub async fn trust_keys(&self) -> Result<Vec<String>> {
        let what = "the repository's trust keys";
        let route = crate::Route::TrustKeys;
        let (status, body) = self
            .send(what, route.method(), &route.path_and_query(), Bytes::new())
            .await?;
        if status != StatusCode::OK {
            return Err(Self::status_error(what, status, &body));
        }
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Sends `body` as JSON to one of the small JSON routes (ticket, report,
    /// swarm), the signature covering the body (its meaning matters),
    /// and answers the reply's body when the status is a success.
    async fn post_json<T: serde::Serialize>(
        &self,
        what: &str,
        route: &crate::Route,
        body: &T,
    ) -> Result<Bytes> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Invalid {
            what: what.to_owned(),
            why: e.to_string(),
        })?;
        let (status, body) = self
            .send_with(
                what,
                route.method(),
                &route.path_and_query(),
                Bytes::from(body),
                true,
            )
            .await?;
        if !status.is_success() {
            return Err(Self::status_error(what, status, &body));
        }
        Ok(body)
    }

    /// A signed session ticket for distributing `bucket/key` to
    /// `req`'s audience (`POST /chunks/ticket/...`), with its control
    /// secret and the manifest it was signed over (checked like
    /// [`ChunkClient::manifest`]). Only over this authenticated channel
    /// does the secret travel from the repository.
    pub async fn ticket(
        &self,
        bucket: &str,
        key: &str,
        req: &crate::wire::TicketRequest,
    ) -> Result<crate::wire::TicketGrant> {
        let what = format!("session ticket for {bucket}/{key}");
        let route = crate::Route::Ticket {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        let body = self.post_json(&what, &route, req).await?;
        let grant: crate::wire::TicketGrant =
            serde_json::from_slice(&body).map_err(|e| ClientError::Invalid {
                what: what.clone(),
                why: e.to_string(),
            })?;
        grant
            .manifest
            .check()
            .map_err(|err| ClientError::Manifest { what, err })?;
        Ok(grant)
    }

    /// Tell the repository how a distribution session of `bucket/key` ended
    /// (`POST /chunks/report/...`), for its console.
    pub async fn report(
        &self,
        bucket: &str,
        key: &str,
        report: &crate::wire::SessionReport,
    ) -> Result<()> {
        let what = format!("session report for {bucket}/{key}");
        let route = crate::Route::Report {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        self.post_json(&what, &route, report).await?;
        Ok(())
    }

    /// Announce to the swarm of `bucket/key` (`POST /chunks/swarm/...`):
    /// the tracker's answer, its manifest (when sent) checked like
    /// [`ChunkClient::manifest`] and against the digest it came with.
    pub async fn swarm_announce(
        &self,
        bucket: &str,
        key: &str,
        announce: &crate::swarm::Announce,
    ) -> Result<crate::swarm::AnnounceReply> {
        let what = format!("swarm announce for {bucket}/{key}");
        let route = crate::Route::Swarm {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        let invalid = |why: String| ClientError::Invalid {
            what: what.clone(),
            why,
        };
        let body = self.post_json(&what, &route, announce).await?;
        let reply: crate::swarm::AnnounceReply =
            serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
        if reply.version != crate::swarm::SWARM_VERSION {
            return Err(invalid(format!(
                "tracker speaks swarm version {}, this build {}",
                reply.version,
                crate::swarm::SWARM_VERSION
            )));
        }
        if let Some(doc) = &reply.manifest {
            doc.check().map_err(|err| ClientError::Manifest {
                what: what.clone(),
                err,
            })?;
            let digest = hex::encode(crate::swarm::manifest_digest(&doc.entries()));
            if digest != reply.manifest_digest {
                return Err(invalid("manifest does not match its digest".into()));
            }
        }
        Ok(reply)
    }

    /// Commit `bucket/key` at the endpoint from chunks it already holds
    /// (`PUT /chunks/manifest/...`): keeps them referenced, so garbage
    /// collection leaves them alone. Answers the object's ETag.
    pub async fn commit_manifest(
        &self,
        bucket: &str,
        key: &str,
        chunks: &[ManifestEntry],
    ) -> Result<String> {
        let what = format!("committing {bucket}/{key}");
        let path = manifest_path(bucket, key);
        let doc = ManifestCommit::new(chunks);
        let body = serde_json::to_vec(&doc).map_err(|e| ClientError::Invalid {
            what: what.clone(),
            why: e.to_string(),
        })?;
        let (status, resp) = self
            .send(&what, Method::PUT, &path, Bytes::from(body))
            .await?;
        if status != StatusCode::OK {
            return Err(Self::status_error(&what, status, &resp));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&resp).map_err(|e| ClientError::Invalid {
                what: what.clone(),
                why: e.to_string(),
            })?;
        Ok(v["etag"].as_str().unwrap_or_default().to_string())
    }

    /// Fetch one chunk, verified against its id.
    pub async fn get_chunk(&self, id: &ChunkId) -> Result<Bytes> {
        let what = format!("chunk {id}");
        let (status, body) = self
            .send(
                &what,
                Method::GET,
                &Route::GetChunk(*id).path_and_query(),
                Bytes::new(),
            )
            .await?;
        if status != StatusCode::OK {
            return Err(Self::status_error(&what, status, &body));
        }
        if ChunkId::of(&body) != *id {
            return Err(ClientError::Integrity(*id));
        }
        Ok(body)
    }

    /// Store a chunk upstream; true if it was new there.
    pub async fn put_chunk(&self, id: &ChunkId, data: Bytes) -> Result<bool> {
        let what = format!("storing chunk {id}");
        let (status, body) = self
            .send(
                &what,
                Method::PUT,
                &Route::PutChunk(*id).path_and_query(),
                data,
            )
            .await?;
        match status {
            StatusCode::CREATED => Ok(true),
            StatusCode::OK => Ok(false),
            s => Err(Self::status_error(&what, s, &body)),
        }
    }

    /// Which of `ids` the endpoint holds.
    pub async fn have(&self, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        self.post_id_set(
            "asking which chunks are held",
            &Route::Have.path_and_query(),
            ids,
        )
        .await
    }

    /// Claim `ids` for migration `group` at the endpoint (Shrinker's
    /// coordination service): the answer is the subset this caller won and
    /// must send; the others were claimed first by another sender.
    pub async fn claim(&self, group: &str, ids: &[ChunkId]) -> Result<HashSet<ChunkId>> {
        let path = Route::Claim {
            group: group.to_string(),
        }
        .path_and_query();
        self.post_id_set("claiming pages for a migration group", &path, ids)
            .await
    }

    /// POST `ids` as hex lines to `path` and read back the subset the
    /// endpoint answers with (`have`, `claim`). Bounded request bodies:
    /// 64 K ids (4 MiB of hex) per request.
    async fn post_id_set(
        &self,
        what: &str,
        path: &str,
        ids: &[ChunkId],
    ) -> Result<HashSet<ChunkId>> {
        let mut out = HashSet::new();
        for batch in ids.chunks(64 * 1024) {
            let (status, resp) = self
                .send(what, Method::POST, path, ids::encode(batch))
                .await?;
            if status != StatusCode::OK {
                return Err(Self::status_error(what, status, &resp));
            }
            for line in String::from_utf8_lossy(&resp).lines() {
                let id = line.trim().parse().map_err(|_| ClientError::Invalid {
                    what: what.to_string(),
                    why: format!("bad chunk id {line:?}"),
                })?;
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// A presigned S3 GET URL for an object (e.g. a QEMU curl backing file).
    pub fn presign_get(&self, bucket: &str, key: &str, expires: Duration) -> Result<String> {
        let url = format!(
            "{}/{}/{}",
            self.endpoint,
            utf8_percent_encode(bucket, KEY_SET),
            utf8_percent_encode(key, KEY_SET)
        );
        let (_, params) = self.sign_request(
            &Method::GET,
            &url,
            self.settings(),
            SignableBody::UnsignedPayload,
            Some(expires),
        )?;
        let mut out = url;
        for (i, (k, v)) in params.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(k);
            out.push('=');
            out.push_str(&utf8_percent_encode(v, NON_ALPHANUMERIC_QUERY).to_string());
        }
        Ok(out)
    }
}

/// Query values: escape everything but RFC 3986 unreserved characters.
const NON_ALPHANUMERIC_QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An error with its causes ("client error (Connect): Connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `s3://BUCKET/KEY` (or `BUCKET/KEY`) split in two.
/// The roots an https endpoint's certificate must chain to: the CA file
/// alone when given, else the system's store.
fn root_store(ca: Option<&Path>) -> Result<rustls::RootCertStore> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let bad = |e: String| ClientError::Tls(format!("CA file {}: {e}", path.display()));
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?;
            for c in certs {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(ClientError::Tls(
                    "no CA certificates in the system store; give --ca FILE".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// Certificate failures get a hint at the usual cause.
fn with_tls_hint(err: String) -> String {
    if err.contains("certificate") {
        format!("{err} (the server's TLS certificate does not verify: give --ca with the CA that signed it, e.g. DATA_DIR/tls/ca.pem of a --tls-self-signed server)")
    } else {
        err
    }
}

pub fn parse_s3_url(s: &str) -> Option<(String, String)> {
    let s = s.strip_prefix("s3://").unwrap_or(s);
    match s.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Some((b.to_string(), k.to_string())),
        _ => None,
    }
}

/// `/chunks/manifest/BUCKET/KEY`, both escaped as S3 escapes keys.
fn manifest_path(bucket: &str, key: &str) -> String {
    Route::Manifest {
        bucket: bucket.to_string(),
        key: key.to_string(),
    }
    .path_and_query()
}

/// A manifest answer, parsed and checked (see [`ManifestDoc::check`]).
fn decode_manifest(what: &str, body: &[u8]) -> Result<ManifestDoc> {
    let doc: ManifestDoc = serde_json::from_slice(body).map_err(|e| ClientError::Invalid {
        what: what.to_string(),
        why: e.to_string(),
    })?;
    doc.check().map_err(|err| ClientError::Manifest {
        what: what.to_string(),
        err,
    })?;
    Ok(doc)
}
