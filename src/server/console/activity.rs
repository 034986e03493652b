//! What the server sees of transfers, for the Transfers page: the chunk API
//! route is wrapped so every call is noted (tickets issued for chain and
//! multicast sessions, manifest fetches that start a pull, batch gets and
//! single-chunk reads, have queries, migration-group claims) without the
//! chunk API knowing about the console.
//!
//! Bytes served are attributed to the newest session of the same user that
//! is still short of its object's size and was active in the last minute:
//! the chunk API carries no session id, so this is a heuristic (two pulls by
//! one user at once share their figures). Per-node outcomes come from the
//! sender: `propagate` and `mcast send` post their report to
//! `/chunks/report/BUCKET/KEY` when they end, and it is attached to the
//! newest session of that user, object and kind.
//!
//! A swarm has no sender and no ticket: its session starts with the first
//! tracker announce for an object version (its ETag) and lists every peer
//! that announced; each `swarm-agent` reports only itself, so per-node
//! reports are merged into the session's one outcome, a node reporting
//! again replacing its earlier entry.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use http::Method;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use s3_compat::{ByteStream, ExtraRoute, ResponseBody, User};
use serde::Serialize;

use crate::chunk_api::route::Route;
use crate::store::{now_ms, Store};

/// Sessions kept (running and recent).
const MAX_SESSIONS: usize = 100;
/// A session without a request for this long is no longer running.
const ACTIVE_FOR: Duration = Duration::from_secs(60);
/// Rate samples kept (one per [`RATE_EVERY`]).
const RATE_SAMPLES: usize = 16;
pub const RATE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A manifest fetch (delta pull, pseudo image, chain head).
    Pull,
    /// A ticket for a chain broadcast to these nodes.
    Chain,
    /// A ticket for a multicast group.
    Multicast,
    /// Tracker announces for one version of an object.
    Swarm,
}

struct Session {
    id: u64,
    kind: Kind,
    user: String,
    bucket: String,
    key: String,
    /// Nodes of a chain, or the multicast group.
    audience: String,
    /// Swarm only: the object's ETag the swarm is for, and the peers that
    /// announced (bounded by [`chunk_api::MAX_REPORT_NODES`]).
    version: Option<String>,
    members: Vec<String>,
    started_ms: u64,
    last: Instant,
    last_ms: u64,
    total_bytes: u64,
    served_bytes: Arc<AtomicU64>,
    requests: u64,
    /// The sender's report, once the session ended.
    outcome: Option<chunk_api::SessionReport>,
}

struct Group {
    name: String,
    claim_requests: u64,
    ids_asked: u64,
    last_ms: u64,
}

#[derive(Default)]
struct Totals {
    have_ids: u64,
    get_bytes: u64,
    put_bytes: u64,
    claim_ids: u64,
}

#[derive(Default)]
struct State {
    next_id: u64,
    sessions: VecDeque<Session>,
    groups: VecDeque<Group>,
    rates: VecDeque<(Instant, [u64; 4])>,
}

pub struct Activity {
    store: Store,
    state: Mutex<State>,
    totals: Arc<TotalsAtomic>,
}

#[derive(Default)]
struct TotalsAtomic {
    have_ids: AtomicU64,
    /// Shared with the byte counters of streaming responses.
    get_bytes: Arc<AtomicU64>,
    put_bytes: AtomicU64,
    claim_ids: AtomicU64,
}

impl TotalsAtomic {
    fn snapshot(&self) -> Totals {
        Totals {
            have_ids: self.have_ids.load(Ordering::Relaxed),
            get_bytes: self.get_bytes.load(Ordering::Relaxed),
            put_bytes: self.put_bytes.load(Ordering::Relaxed),
            claim_ids: self.claim_ids.load(Ordering::Relaxed),
        }
    }
}

/// The JSON the Transfers page polls.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub time_ms: u64,
    pub sessions: Vec<SessionView>,
    pub groups: Vec<GroupView>,
    /// Per second over the last ~30 s.
    pub have_ids_per_s: f64,
    pub get_bytes_per_s: f64,
    pub put_bytes_per_s: f64,
    pub claim_ids_per_s: f64,
    pub have_ids_total: u64,
    pub get_bytes_total: u64,
    pub put_bytes_total: u64,
    pub claim_ids_total: u64,
}

#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: u64,
    pub kind: Kind,
    pub user: String,
    pub bucket: String,
    pub key: String,
    pub audience: String,
    /// Swarm only: the ETag of the object version the swarm is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub started_ms: u64,
    pub last_ms: u64,
    pub running: bool,
    pub total_bytes: u64,
    pub served_bytes: u64,
    /// 0..=1
    pub progress: f64,
    pub requests: u64,
    /// Per node, from the sender's report (absent while running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<chunk_api::SessionReport>,
}

#[derive(Debug, Serialize)]
pub struct GroupView {
    pub group: String,
    pub claim_requests: u64,
    pub ids_asked: u64,
    pub last_ms: u64,
}

impl Activity {
    pub fn new(store: Store) -> Arc<Activity> {
        Arc::new(Activity {
            store,
            state: Mutex::new(State::default()),
            totals: Arc::default(),
        })
    }

    /// Wrap the chunk API route so its calls are noted here.
    pub fn observe(self: &Arc<Self>, inner: Arc<dyn ExtraRoute>) -> Arc<dyn ExtraRoute> {
        Arc::new(Observed {
            inner,
            activity: self.clone(),
        })
    }

    /// Keep a rate sample; called every [`RATE_EVERY`].
    pub fn sample_rates(&self) {
        let t = self.totals.snapshot();
        let mut st = self.state.lock();
        st.rates.push_back((
            Instant::now(),
            [t.have_ids, t.get_bytes, t.put_bytes, t.claim_ids],
        ));
        while st.rates.len() > RATE_SAMPLES {
            st.rates.pop_front();
        }
    }

    /// The object's size and ETag (zero and empty when it is gone).
    async fn head(&self, bucket: &str, key: &str) -> (u64, String) {
        // A metadata read, which may cross the network (postgres): off the
        // reactor.
        let (store, b, k) = (self.store.clone(), bucket.to_string(), key.to_string());
        tokio::task::spawn_blocking(move || {
            store
                .head(&b, &k)
                .map_or((0, String::new()), |r| (r.size, r.etag))
        })
        .await
        .unwrap_or((0, String::new()))
    }

    async fn start(&self, kind: Kind, user: &str, bucket: &str, key: &str, audience: String) {
        let (total_bytes, _) = self.head(bucket, key).await;
        let mut st = self.state.lock();
        Self::push(
            &mut st,
            kind,
            user,
            bucket,
            key,
            audience,
            None,
            total_bytes,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        st: &mut State,
        kind: Kind,
        user: &str,
        bucket: &str,
        key: &str,
        audience: String,
        version: Option<String>,
        total_bytes: u64,
    ) {
        st.next_id += 1;
        let id = st.next_id;
        let now = now_ms();
        st.sessions.push_back(Session {
            id,
            kind,
            user: user.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            audience,
            version,
            members: Vec::new(),
            started_ms: now,
            last: Instant::now(),
            last_ms: now,
            total_bytes,
            served_bytes: Arc::default(),
            requests: 1,
            outcome: None,
        });
        while st.sessions.len() > MAX_SESSIONS {
            st.sessions.pop_front();
        }
    }

    /// The byte counter of the session bytes served to `user` go to.
    fn attribute(&self, user: &str) -> Option<Arc<AtomicU64>> {
        let mut st = self.state.lock();
        let now = Instant::now();
        let s = st.sessions.iter_mut().rev().find(|s| {
            s.user == user
                && now.duration_since(s.last) < ACTIVE_FOR
                && s.served_bytes.load(Ordering::Relaxed) < s.total_bytes
        })?;
        s.last = now;
        s.last_ms = now_ms();
        s.requests += 1;
        Some(s.served_bytes.clone())
    }

    /// A tracker announce by `peer` (None: the body was too large to
    /// read here) for the current version of `bucket/key`: noted in that
    /// version's swarm session, which starts with its first announce.
    async fn swarm_announce(&self, user: &str, bucket: &str, key: &str, peer: Option<String>) {
        let (total_bytes, etag) = self.head(bucket, key).await;
        let mut st = self.state.lock();
        let found = st.sessions.iter().rposition(|s| {
            s.kind == Kind::Swarm
                && s.user == user
                && s.bucket == bucket
                && s.key == key
                && s.version.as_deref() == Some(etag.as_str())
        });
        let i = match found {
            Some(i) => i,
            None => {
                Self::push(
                    &mut st,
                    Kind::Swarm,
                    user,
                    bucket,
                    key,
                    String::new(),
                    Some(etag),
                    total_bytes,
                );
                st.sessions.len() - 1
            }
        };
        let Some(s) = st.sessions.get_mut(i) else {
            return;
        };
        s.last = Instant::now();
        s.last_ms = now_ms();
        s.requests += 1;
        if let Some(p) = peer {
            if !s.members.contains(&p) && s.members.len() < chunk_api::MAX_REPORT_NODES {
                s.members.push(p);
                s.audience = s.members.join(", ");
            }
        }
    }

    /// Attach a sender's report to the newest matching session; a swarm
    /// node's report (one node) is merged into its swarm's outcome.
    fn finish(&self, user: &str, bucket: &str, key: &str, report: chunk_api::SessionReport) {
        let kind = match report.kind.as_str() {
            "multicast" => Kind::Multicast,
            "swarm" => Kind::Swarm,
            _ => Kind::Chain,
        };
        let mut st = self.state.lock();
        if kind == Kind::Swarm {
            let found =
                st.sessions.iter_mut().rev().find(|s| {
                    s.user == user && s.bucket == bucket && s.key == key && s.kind == kind
                });
            if let Some(s) = found {
                s.last_ms = now_ms();
                s.outcome = Some(merge_swarm(s.outcome.take(), report));
            }
            return;
        }
        let found = st
            .sessions
            .iter_mut()
            .rev()
            .find(|s| s.user == user && s.bucket == bucket && s.key == key && s.kind == kind);
        if let Some(s) = found {
            s.last_ms = now_ms();
            s.outcome = Some(report);
        }
    }

    fn claim(&self, group: &str, ids: u64) {
        let mut st = self.state.lock();
        let now = now_ms();
        if let Some(g) = st.groups.iter_mut().find(|g| g.name == group) {
            g.claim_requests += 1;
            g.ids_asked += ids;
            g.last_ms = now;
        } else {
            st.groups.push_back(Group {
                name: group.to_string(),
                claim_requests: 1,
                ids_asked: ids,
                last_ms: now,
            });
            while st.groups.len() > MAX_SESSIONS {
                st.groups.pop_front();
            }
        }
    }

    /// What `user` may see: its own sessions, or all for the admin.
    pub fn snapshot(&self, user: &str, admin: bool) -> Snapshot {
        let t = self.totals.snapshot();
        let st = self.state.lock();
        let now = Instant::now();
        let rate = |i: usize| -> f64 {
            let (Some(a), Some(b)) = (st.rates.front(), st.rates.back()) else {
                return 0.0;
            };
            let dt = b.0.duration_since(a.0).as_secs_f64();
            if dt <= 0.0 {
                0.0
            } else {
                b.1[i].saturating_sub(a.1[i]) as f64 / dt
            }
        };
        let sessions = st
            .sessions
            .iter()
            .rev()
            .filter(|s| admin || s.user == user)
            .map(|s| {
                let served = s.served_bytes.load(Ordering::Relaxed);
                SessionView {
                    id: s.id,
                    kind: s.kind,
                    user: s.user.clone(),
                    bucket: s.bucket.clone(),
                    key: s.key.clone(),
                    audience: s.audience.clone(),
                    version: s.version.clone(),
                    started_ms: s.started_ms,
                    last_ms: s.last_ms,
                    running: if s.kind == Kind::Swarm {
                        // Peers announce every few seconds until they leave
                        // and report; the repository may serve little.
                        now.duration_since(s.last) < ACTIVE_FOR
                            && s.outcome.as_ref().map_or(0, |o| o.nodes.len()) < s.members.len()
                    } else {
                        s.outcome.is_none()
                            && now.duration_since(s.last) < ACTIVE_FOR
                            && served < s.total_bytes
                    },
                    total_bytes: s.total_bytes,
                    served_bytes: served,
                    progress: if s.total_bytes == 0 {
                        0.0
                    } else {
                        (served as f64 / s.total_bytes as f64).min(1.0)
                    },
                    requests: s.requests,
                    outcome: s.outcome.clone(),
                }
            })
            .collect();
        // Group names are chosen by the migrating agents; only the admin
        // sees them, since claims carry no owner.
        let groups = if admin {
            st.groups
                .iter()
                .rev()
                .map(|g| GroupView {
                    group: g.name.clone(),
                    claim_requests: g.claim_requests,
                    ids_asked: g.ids_asked,
                    last_ms: g.last_ms,
                })
                .collect()
        } else {
            Vec::new()
        };
        Snapshot {
            time_ms: now_ms(),
            sessions,
            groups,
            have_ids_per_s: rate(0),
            get_bytes_per_s: rate(1),
            put_bytes_per_s: rate(2),
            claim_ids_per_s: rate(3),
            have_ids_total: t.have_ids,
            get_bytes_total: t.get_bytes,
            put_bytes_total: t.put_bytes,
            claim_ids_total: t.claim_ids,
        }
    }
}

/// A swarm's outcome with one more node's report: the node's entry
/// replaced (a node that ran again) or added (bounded), the repository's
/// bytes summed over every report (it sent them all), the time the slowest
/// node's.
fn merge_swarm(
    had: Option<chunk_api::SessionReport>,
    node: chunk_api::SessionReport,
) -> chunk_api::SessionReport {
    let mut out = had.unwrap_or_else(|| chunk_api::SessionReport {
        kind: "swarm".into(),
        ..Default::default()
    });
    out.object_size = node.object_size;
    for n in node.nodes {
        if let Some(old) = out.nodes.iter_mut().find(|o| o.node == n.node) {
            *old = n;
        } else if out.nodes.len() < chunk_api::MAX_REPORT_NODES {
            out.nodes.push(n);
        }
    }
    out.bytes_sent = out.bytes_sent.saturating_add(node.bytes_sent);
    out.seconds = out.seconds.max(node.seconds);
    out
}

struct Observed {
    inner: Arc<dyn ExtraRoute>,
    activity: Arc<Activity>,
}

/// Counts the bytes of a body stream as they pass.
struct Counting<S> {
    inner: S,
    counters: Vec<Arc<AtomicU64>>,
}

impl<S: futures::Stream<Item = Result<Bytes, E>> + Unpin, E> futures::Stream for Counting<S> {
    type Item = Result<Bytes, E>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &r {
            for c in &self.counters {
                c.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }
}

fn count_response(
    resp: http::Response<ResponseBody>,
    counters: Vec<Arc<AtomicU64>>,
) -> http::Response<ResponseBody> {
    let (parts, body) = resp.into_parts();
    let stream = Counting {
        inner: body.into_data_stream(),
        counters,
    };
    let body = http_body_util::StreamBody::new(stream.map(|r| r.map(hyper::body::Frame::data)))
        .boxed_unsync();
    http::Response::from_parts(parts, body)
}

/// Ticket request bodies are small (a node list): read whole, bounded, then
/// handed on unchanged.
const MAX_PEEK: usize = 256 << 10;

async fn peek(mut body: ByteStream) -> (Bytes, ByteStream) {
    let mut buf = bytes::BytesMut::new();
    let mut rest: Option<ByteStream> = None;
    let mut err = None;
    while let Some(item) = body.next().await {
        match item {
            Ok(b) => {
                buf.extend_from_slice(&b);
                if buf.len() > MAX_PEEK {
                    rest = Some(body);
                    break;
                }
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let head = buf.freeze();
    let first: Vec<Result<Bytes, s3_compat::BodyError>> = match err {
        Some(e) => vec![Ok(head.clone()), Err(e)],
        None => vec![Ok(head.clone())],
    };
    let replay = futures::stream::iter(first);
    let stream: ByteStream = match rest {
        Some(r) => Box::pin(replay.chain(r)),
        None => Box::pin(replay),
    };
    (head, stream)
}

#[async_trait]
impl ExtraRoute for Observed {
    fn matches(&self, method: &Method, uri: &http::Uri) -> bool {
        self.inner.matches(method, uri)
    }

    async fn call(
        &self,
        user: Option<User>,
        req: http::Request<ByteStream>,
    ) -> http::Response<ResponseBody> {
        let route = Route::parse(req.method(), req.uri()).ok();
        let (Some(route), Some(who)) = (route, user.as_ref().map(|u| u.id.clone())) else {
            return self.inner.call(user, req).await;
        };
        let a = &self.activity;
        let t = &a.totals;
        match route {
            Route::Ticket { bucket, key } => {
                let (parts, body) = req.into_parts();
                let (head, body) = peek(body).await;
                let resp = self
                    .inner
                    .call(user, http::Request::from_parts(parts, body))
                    .await;
                if resp.status().is_success() {
                    let tr: Option<chunk_api::wire::TicketRequest> =
                        serde_json::from_slice(&head).ok();
                    let (kind, audience) = match tr {
                        Some(chunk_api::wire::TicketRequest { group: Some(g), .. }) => {
                            (Kind::Multicast, g)
                        }
                        Some(chunk_api::wire::TicketRequest { nodes: Some(n), .. }) => {
                            (Kind::Chain, n.join(", "))
                        }
                        _ => (Kind::Chain, String::new()),
                    };
                    a.start(kind, &who, &bucket, &key, audience).await;
                }
                resp
            }
            Route::Report { bucket, key } => {
                let (parts, body) = req.into_parts();
                let (head, body) = peek(body).await;
                let resp = self
                    .inner
                    .call(user, http::Request::from_parts(parts, body))
                    .await;
                if resp.status().is_success() {
                    if let Ok(r) = serde_json::from_slice::<chunk_api::SessionReport>(&head) {
                        a.finish(&who, &bucket, &key, r);
                    }
                }
                resp
            }
            Route::Swarm { bucket, key } => {
                let (parts, body) = req.into_parts();
                let (head, body) = peek(body).await;
                let resp = self
                    .inner
                    .call(user, http::Request::from_parts(parts, body))
                    .await;
                if resp.status().is_success() {
                    let peer = serde_json::from_slice::<chunk_api::swarm::Announce>(&head)
                        .ok()
                        .map(|a| a.peer);
                    a.swarm_announce(&who, &bucket, &key, peer).await;
                }
                resp
            }
            Route::Manifest { bucket, key } => {
                let resp = self.inner.call(user, req).await;
                if resp.status().is_success() {
                    a.start(Kind::Pull, &who, &bucket, &key, String::new())
                        .await;
                }
                resp
            }
            Route::GetBatch | Route::GetChunk(_) => {
                let resp = self.inner.call(user, req).await;
                let mut counters = vec![];
                if resp.status().is_success() {
                    if let Some(c) = a.attribute(&who) {
                        counters.push(c);
                    }
                    counters.push(t.get_bytes.clone());
                }
                count_response(resp, counters)
            }
            Route::Have => {
                let (parts, body) = req.into_parts();
                let totals = t.clone();
                // One hex id and a newline per line: 65 bytes.
                let body: ByteStream = Box::pin(body.map(move |r| {
                    if let Ok(b) = &r {
                        totals
                            .have_ids
                            .fetch_add(b.len() as u64 / 65, Ordering::Relaxed);
                    }
                    r
                }));
                a.attribute(&who);
                self.inner
                    .call(user, http::Request::from_parts(parts, body))
                    .await
            }
            Route::PutBatch | Route::PutChunk(_) => {
                let (parts, body) = req.into_parts();
                let totals = t.clone();
                let body: ByteStream = Box::pin(body.map(move |r| {
                    if let Ok(b) = &r {
                        totals
                            .put_bytes
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                    r
                }));
                self.inner
                    .call(user, http::Request::from_parts(parts, body))
                    .await
            }
            Route::Claim { group } => {
                let (parts, body) = req.into_parts();
                let (head, body) = peek(body).await;
                let ids = head.len() as u64 / 65;
                t.claim_ids.fetch_add(ids, Ordering::Relaxed);
                a.claim(&group, ids);
                self.inner
                    .call(user, http::Request::from_parts(parts, body))
                    .await
            }
            _ => self.inner.call(user, req).await,
        }
    }
}
