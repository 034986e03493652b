//! The chunk API's routes, written once: the server parses requests with
//! [`Route::parse`] and the client builds them with [`Route::method`] and
//! [`Route::path_and_query`], so the two ends cannot drift apart.
//!
//! ```text
//! GET|HEAD|PUT /chunks/{id}                  one chunk
//! POST         /chunks?have                  which of these ids are held
//! POST         /chunks?put | /chunks?get     batches of frames
//! POST         /chunks?claim&group=G         first-claimer-wins (migration groups)
//! GET|PUT      /chunks/manifest/BUCKET/KEY   an object's manifest; commit one
//! GET          /chunks/trust-keys            the repository's signing keys
//! POST         /chunks/ticket/BUCKET/KEY     a signed distribution-session ticket
//! POST         /chunks/report/BUCKET/KEY     how a distribution session ended, per node
//! POST         /chunks/swarm/BUCKET/KEY      join / announce to the object's swarm (tracker)
//! ```

use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use strato_store::ChunkId;

/// Characters S3 leaves unescaped in a key (RFC 3986 unreserved, plus `/`).
pub(crate) const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// What a chunk API request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    GetChunk(ChunkId),
    HeadChunk(ChunkId),
    PutChunk(ChunkId),
    Have,
    PutBatch,
    GetBatch,
    Claim {
        group: String,
    },
    Manifest {
        bucket: String,
        key: String,
    },
    CommitManifest {
        bucket: String,
        key: String,
    },
    /// The public keys the repository signs distribution tickets with
    /// (current first, then retired ones still accepted), one per line.
    TrustKeys,
    /// A signed session ticket for a chain or multicast distribution of
    /// the object (body: JSON [`crate::wire::TicketRequest`]).
    /// A sender's per-node outcome of a session it ran (body: JSON
    /// [`crate::wire::SessionReport`]).
    Report {
        bucket: String,
        key: String,
    },
    Ticket {
        bucket: String,
        key: String,
    },
    /// Announce to the object's swarm (body: JSON
    /// [`crate::swarm::Announce`]); the tracker answers with peers.
    Swarm {
        bucket: String,
        key: String,
    },
}

/// A request that is not a chunk API route; the message says what is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(pub String);

fn bad(s: impl Into<String>) -> RouteError {
    RouteError(s.into())
}

impl Route {
    /// Whether `path` belongs to the chunk API at all.
    pub fn matches(path: &str) -> bool {
        path == "/chunks" || path.starts_with("/chunks/")
    }

    pub fn method(&self) -> Method {
        match self {
            Route::GetChunk(_) | Route::Manifest { .. } | Route::TrustKeys => Method::GET,
            Route::HeadChunk(_) => Method::HEAD,
            Route::PutChunk(_) | Route::CommitManifest { .. } => Method::PUT,
            Route::Have
            | Route::PutBatch
            | Route::GetBatch
            | Route::Claim { .. }
            | Route::Ticket { .. }
            | Route::Report { .. }
            | Route::Swarm { .. } => Method::POST,
        }
    }

    /// The request target, escaped as S3 escapes keys.
    pub fn path_and_query(&self) -> String {
        match self {
            Route::GetChunk(id) | Route::HeadChunk(id) | Route::PutChunk(id) => {
                format!("/chunks/{id}")
            }
            Route::Have => "/chunks?have".into(),
            Route::TrustKeys => "/chunks/trust-keys".into(),
            Route::PutBatch => "/chunks?put".into(),
            Route::GetBatch => "/chunks?get".into(),
            Route::Claim { group } => format!(
                "/chunks?claim&group={}",
                utf8_percent_encode(group, KEY_SET)
            ),
            Route::Manifest { bucket, key } | Route::CommitManifest { bucket, key } => format!(
                "/chunks/manifest/{}/{}",
                utf8_percent_encode(bucket, KEY_SET),
                utf8_percent_encode(key, KEY_SET)
            ),
            Route::Ticket { bucket, key } => format!(
                "/chunks/ticket/{}/{}",
                utf8_percent_encode(bucket, KEY_SET),
                utf8_percent_encode(key, KEY_SET)
            ),
            Route::Report { bucket, key } => format!(
                "/chunks/report/{}/{}",
                utf8_percent_encode(bucket, KEY_SET),
                utf8_percent_encode(key, KEY_SET)
            ),
            Route::Swarm { bucket, key } => format!(
                "/chunks/swarm/{}/{}",
                utf8_percent_encode(bucket, KEY_SET),
                utf8_percent_encode(key, KEY_SET)
            ),
        }
    }

    /// The route of a request, checked before anything is done.
    pub fn parse(method: &Method, uri: &http::Uri) -> Result<Route, RouteError> {
        let rest = uri
            .path()
            .strip_prefix("/chunks")
            .ok_or_else(|| bad("not a chunk API path"))?;
        if rest.is_empty() || rest == "/" {
            return Self::parse_query(method, uri.query().unwrap_or(""));
        }
        // `/chunks` must be followed by `/`: `/chunksX` is another path (and
        // X may be any character, not one byte to skip).
        let rest = rest
            .strip_prefix('/')
            .ok_or_else(|| bad("not a chunk API path"))?;
        if let Some(obj) = rest.strip_prefix("manifest/") {
            return Self::parse_manifest(method, obj);
        }
        if let Some(obj) = rest.strip_prefix("ticket/") {
            if method != Method::POST {
                return Err(bad("tickets are requested with POST"));
            }
            let (bucket, key) = Self::bucket_key(obj, "/chunks/ticket/BUCKET/KEY")?;
            return Ok(Route::Ticket { bucket, key });
        }
        if let Some(obj) = rest.strip_prefix("report/") {
            if method != Method::POST {
                return Err(bad("session reports are sent with POST"));
            }
            let (bucket, key) = Self::bucket_key(obj, "/chunks/report/BUCKET/KEY")?;
            return Ok(Route::Report { bucket, key });
        }
        if let Some(obj) = rest.strip_prefix("swarm/") {
            if method != Method::POST {
                return Err(bad("swarm announces are sent with POST"));
            }
            let (bucket, key) = Self::bucket_key(obj, "/chunks/swarm/BUCKET/KEY")?;
            return Ok(Route::Swarm { bucket, key });
        }
        if rest == "trust-keys" {
            return match *method {
                Method::GET => Ok(Route::TrustKeys),
                _ => Err(bad(format!("{method} is not allowed on the trust keys"))),
            };
        }
        let id: ChunkId = rest
            .parse()
            .map_err(|_| bad(format!("{rest:?} is not a chunk id (64 hex digits)")))?;
        match *method {
            Method::GET => Ok(Route::GetChunk(id)),
            Method::HEAD => Ok(Route::HeadChunk(id)),
            Method::PUT => Ok(Route::PutChunk(id)),
            _ => Err(bad(format!("{method} is not allowed on a chunk"))),
        }
    }

    /// `POST /chunks?...`: the batch and set operations.
    fn parse_query(method: &Method, query: &str) -> Result<Route, RouteError> {
        let params: Vec<&str> = query.split('&').collect();
        let has = |name: &str| {
            params
                .iter()
                .any(|p| *p == name || p.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
        };
        if method != Method::POST {
            return Err(bad("use POST /chunks?have, ?put, ?get or ?claim&group=G"));
        }
        if has("claim") {
            let group = params
                .iter()
                .find_map(|p| p.strip_prefix("group="))
                .ok_or_else(|| bad("claim needs group=NAME"))?;
            let group = percent_encoding::percent_decode_str(group)
                .decode_utf8()
                .map_err(|_| bad("group is not UTF-8"))?;
            return Ok(Route::Claim {
                group: group.into_owned(),
            });
        }
        if has("put") {
            return Ok(Route::PutBatch);
        }
        if has("get") {
            return Ok(Route::GetBatch);
        }
        if has("have") {
            return Ok(Route::Have);
        }
        Err(bad("use POST /chunks?have, ?put, ?get or ?claim&group=G"))
    }

    /// `BUCKET/KEY` (escaped) at the end of a path shaped like `shape`.
    fn bucket_key(obj: &str, shape: &str) -> Result<(String, String), RouteError> {
        let decoded = percent_encoding::percent_decode_str(obj)
            .decode_utf8()
            .map_err(|_| bad("path is not UTF-8"))?;
        match decoded
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        {
            Some((b, k)) => Ok((b.to_string(), k.to_string())),
            None => Err(bad(format!("expected {shape}"))),
        }
    }

    /// `/chunks/manifest/BUCKET/KEY` (escaped).
    fn parse_manifest(method: &Method, obj: &str) -> Result<Route, RouteError> {
        if method != Method::GET && method != Method::PUT {
            return Err(bad("manifests are read with GET and committed with PUT"));
        }
        let (bucket, key) = Self::bucket_key(obj, "/chunks/manifest/BUCKET/KEY")?;
        Ok(if method == Method::GET {
            Route::Manifest { bucket, key }
        } else {
            Route::CommitManifest { bucket, key }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(r: &Route) -> Route {
        let uri: http::Uri = r.path_and_query().parse().unwrap();
        Route::parse(&r.method(), &uri).unwrap()
    }

    #[test]
    fn a_path_that_only_starts_like_chunks_is_refused_not_a_panic() {
        // Found by fuzzing: a multi-byte character right after "/chunks".
        for path in [
            "/chunks\u{442}manifest/b/k",
            "/chunksX",
            "/chunksmanifest/b/k",
        ] {
            let uri: http::Uri = path.parse().unwrap();
            assert!(Route::parse(&Method::GET, &uri).is_err(), "{path}");
        }
    }

    #[test]
    fn every_route_parses_back() {
        let id = ChunkId::of(b"x");
        for r in [
            Route::GetChunk(id),
            Route::HeadChunk(id),
            Route::PutChunk(id),
            Route::Have,
            Route::PutBatch,
            Route::GetBatch,
            Route::Claim {
                group: "g-1.x".into(),
            },
            Route::Manifest {
                bucket: "b".into(),
                key: "dir/img v2 ü.qcow2".into(),
            },
            Route::CommitManifest {
                bucket: "b".into(),
                key: "k".into(),
            },
            Route::TrustKeys,
            Route::Ticket {
                bucket: "b".into(),
                key: "dir/img v2.qcow2".into(),
            },
            Route::Report {
                bucket: "b".into(),
                key: "dir/img v2.qcow2".into(),
            },
            Route::Swarm {
                bucket: "b".into(),
                key: "dir/img v2.qcow2".into(),
            },
        ] {
            assert_eq!(roundtrip(&r), r);
        }
    }

    #[test]
    fn refuses_what_is_not_a_route() {
        let id = ChunkId::of(b"x");
        let cases = [
            (Method::GET, "/chunks".to_string()),
            (Method::POST, "/chunks?nothing".to_string()),
            (Method::POST, "/chunks?claim".to_string()),
            (Method::DELETE, format!("/chunks/{id}")),
            (Method::GET, "/chunks/nothex".to_string()),
            (Method::GET, "/chunks/manifest/onlybucket".to_string()),
            (Method::POST, "/chunks/manifest/b/k".to_string()),
            (Method::GET, "/chunks/swarm/b/k".to_string()),
            (Method::POST, "/chunks/swarm/onlybucket".to_string()),
            (Method::GET, "/other".to_string()),
        ];
        for (m, p) in cases {
            let uri: http::Uri = p.parse().unwrap();
            assert!(Route::parse(&m, &uri).is_err(), "{m} {p} parsed");
        }
    }

    proptest! {
        #[test]
        fn any_key_round_trips(bucket in "[a-z0-9][a-z0-9.-]{1,20}", key in "\\PC{1,60}") {
            let r = Route::Manifest { bucket, key };
            prop_assert_eq!(roundtrip(&r), r);
        }
    }
}
