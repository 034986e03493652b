//! Swarm distribution (Nimbus' LANTorrent; thesis §3.5): every node
//! fetches chunks from the others and serves what it holds, the repository
//! is the tracker (`POST /chunks/swarm/...`, `server::swarm`) and the source
//! of chunks no peer holds yet.
//!
//! One agent ([`run`]) per node:
//! - joins the swarm at the tracker, which answers the manifest, peers and
//!   the swarm's secret, and re-announces every interval (its bitmap, done
//!   or not, bytes moved);
//! - keeps its chunks in a store (chunks already there, e.g. of an older
//!   version of the image, are never fetched) or a file in an out-dir
//!   ([`holdings`]);
//! - asks connected peers for chunks, rarest first from a random start,
//!   a bounded window per peer ([`schedule`], [`peer`]); asks the
//!   repository only for chunks no connected peer holds;
//! - verifies every chunk against its id before keeping or serving it; a
//!   peer that sends other bytes is dropped and named in the report, a
//!   peer that vanishes has its outstanding requests asked elsewhere;
//! - serves what it holds to authenticated peers ([`wire`]) and, once
//!   complete, keeps serving (seeding) for a set time.

pub mod holdings;
pub mod peer;
pub mod schedule;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::net::TcpListener;

use chunk_api::swarm::{bitmap_len, Announce, AnnounceReply, SWARM_VERSION};
use chunk_api::{ChunkClient, ManifestDoc};

use crate::store::Store;
use holdings::{FileHoldings, Holdings, StoreHoldings};
use peer::PeerEnd;
use schedule::{PeerId, Scheduler};

/// Where the node keeps the image.
pub enum Target {
    /// A node-local store: the object is committed there.
    Store(Store),
    /// `OUT_DIR/<last component of KEY>`.
    OutDir(PathBuf),
}

/// Bytes verified and kept so far, and the total, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

#[derive(Clone)]
pub struct Options {
    /// `IP:PORT` peers reach this node at.
    pub advertise: String,
    /// Keep serving this long after completing.
    pub seed: Duration,
    /// Requests in flight per peer.
    pub window: usize,
    /// Chunk requests in flight to the repository.
    pub repository_window: usize,
    /// Peers downloaded from at once.
    pub max_peers: usize,
    /// Give up when not complete after this long.
    pub timeout: Duration,
    /// A peer silent this long with requests outstanding is dropped.
    pub io_timeout: Duration,
    pub progress: Option<Arc<Progress>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            advertise: String::new(),
            seed: Duration::from_secs(0),
            window: 16,
            repository_window: 4,
            max_peers: 8,
            timeout: Duration::from_secs(1800),
            io_timeout: Duration::from_secs(10),
            progress: None,
        }
    }
}

/// A peer this node stopped using, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DroppedPeer {
    pub peer: String,
    pub reason: String,
}

/// How the node's part of the swarm went.
#[derive(Debug, Clone, Serialize, Default)]
pub struct NodeReport {
    pub node: String,
    pub bucket: String,
    pub key: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub size: u64,
    /// Distinct non-zero chunks of the manifest.
    pub chunks: usize,
    /// Of those, already in the node's store before it joined.
    pub chunks_already_held: usize,
    pub bytes_already_held: u64,
    pub bytes_from_peers: u64,
    pub bytes_from_repository: u64,
    /// Chunk bytes this node served to other peers.
    pub bytes_served: u64,
    /// Until the image was complete (or the failure).
    pub seconds: f64,
    /// Including seeding.
    pub seconds_total: f64,
    pub peers_dropped: Vec<DroppedPeer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// What the agent's tasks share.
pub struct Shared {
    pub(crate) digest: [u8; 32],
    pub(crate) key: strato_trust::ControlKey,
    pub(crate) sched: Mutex<Scheduler>,
    pub(crate) holdings: Arc<dyn Holdings>,
    pub(crate) limits: wire::Limits,
    pub(crate) advertise: String,
    pub(crate) bitmap_len: usize,
    pub(crate) opts: Options,
    pub(crate) bytes_from_peers: AtomicU64,
    pub(crate) bytes_from_repository: AtomicU64,
    pub(crate) bytes_served: AtomicU64,
    pub(crate) done_bytes: AtomicU64,
    /// Peers heard of (tracker, or an authenticated HELLO).
    known: Mutex<HashMap<String, Known>>,
    dropped: Mutex<Vec<DroppedPeer>>,
}

#[derive(Default)]
struct Known {
    connected: bool,
    /// Never again (lied, refused us).
    banned: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Connection failures after which a peer is given up.
const MAX_FAILURES: u32 = 3;

impl Shared {
    pub(crate) fn index_of(&self, p: usize) -> u32 {
        self.sched.lock().pieces()[p].indices[0]
    }

    /// A peer address heard of; ours and malformed ones are ignored.
    pub(crate) fn learn(&self, addr: &str) {
        if addr == self.advertise || addr.parse::<SocketAddr>().is_err() {
            return;
        }
        self.known.lock().entry(addr.to_string()).or_default();
    }

    fn drop_peer(&self, peer: &str, reason: String) {
        tracing::warn!(peer, %reason, "swarm peer dropped");
        let mut d = self.dropped.lock();
        if !d.iter().any(|x| x.peer == peer && x.reason == reason) {
            d.push(DroppedPeer {
                peer: peer.to_string(),
                reason,
            });
        }
    }

    /// Peers to connect to now (marked connected).
    fn to_connect(&self, now: Instant) -> Vec<String> {
        let mut known = self.known.lock();
        let connected = known.values().filter(|k| k.connected).count();
        let room = self.opts.max_peers.max(1).saturating_sub(connected);
        let mut out = Vec::new();
        for (addr, k) in known.iter_mut() {
            if out.len() >= room {
                break;
            }
            if !k.connected && !k.banned && k.retry_at.is_none_or(|t| now >= t) {
                k.connected = true;
                out.push(addr.clone());
            }
        }
        out
    }

    /// A download connection ended with `end`.
    fn ended(&self, addr: &str, end: &PeerEnd) -> Option<String> {
        let mut known = self.known.lock();
        let k = known.entry(addr.to_string()).or_default();
        k.connected = false;
        match end {
            PeerEnd::Done => None,
            PeerEnd::Lost(why) => {
                k.failures += 1;
                k.retry_at = Some(Instant::now() + Duration::from_secs(1) * k.failures);
                if k.failures >= MAX_FAILURES {
                    k.banned = true;
                    drop(known);
                    self.drop_peer(addr, format!("unreachable or gone: {why}"));
                }
                None
            }
            PeerEnd::Liar(why) => {
                k.banned = true;
                drop(known);
                self.drop_peer(addr, why.clone());
                None
            }
            PeerEnd::Refused(why) => {
                k.banned = true;
                drop(known);
                self.drop_peer(addr, why.clone());
                None
            }
            PeerEnd::Local(why) => Some(why.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("tracker: {0}")]
    Tracker(#[from] chunk_api::ClientError),
    #[error("{0}")]
    Holdings(#[from] holdings::HoldError),
    #[error("{0}")]
    Other(String),
}

fn announce_body(shared: Option<&Shared>, opts: &Options, done: bool, leaving: bool) -> Announce {
    Announce {
        version: SWARM_VERSION,
        peer: opts.advertise.clone(),
        manifest_digest: shared.map(|s| hex::encode(s.digest)),
        have: shared.map_or_else(String::new, |s| hex::encode(s.sched.lock().bitmap())),
        done,
        leaving,
        bytes_from_peers: shared.map_or(0, |s| s.bytes_from_peers.load(Ordering::Relaxed)),
        bytes_from_repository: shared
            .map_or(0, |s| s.bytes_from_repository.load(Ordering::Relaxed)),
        watch: false,
    }
}

/// The first announce, retried a few times: the manifest and the secret.
async fn join(
    client: &ChunkClient,
    bucket: &str,
    key: &str,
    opts: &Options,
) -> Result<(AnnounceReply, ManifestDoc), SwarmError> {
    let mut attempt = 0;
    loop {
        match client
            .swarm_announce(bucket, key, &announce_body(None, opts, false, false))
            .await
        {
            Ok(mut r) => {
                let doc = r
                    .manifest
                    .take()
                    .ok_or_else(|| SwarmError::Other("the tracker sent no manifest".into()))?;
                return Ok((r, doc));
            }
            // A refusal (4xx) is final; a transport failure may pass.
            Err(e @ chunk_api::ClientError::Status { status, .. }) if status.is_client_error() => {
                return Err(e.into())
            }
            Err(e) if attempt >= 4 => return Err(e.into()),
            Err(e) => {
                attempt += 1;
                tracing::warn!("joining the swarm: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
            }
        }
    }
}

/// Run the node's part of the swarm of `bucket/key`: fetch, verify, keep,
/// serve on `listener`, seed, leave. Never panics on peers' input; every
/// failure ends in the report.
pub async fn run(
    client: ChunkClient,
    bucket: &str,
    key: &str,
    target: Target,
    listener: TcpListener,
    opts: Options,
) -> NodeReport {
    let started = Instant::now();
    let mut report = NodeReport {
        node: opts.advertise.clone(),
        bucket: bucket.to_string(),
        key: key.to_string(),
        ..NodeReport::default()
    };
    match run_inner(
        &client,
        bucket,
        key,
        target,
        listener,
        &opts,
        &mut report,
        started,
    )
    .await
    {
        Ok(()) => report.ok = true,
        Err(e) => {
            report.ok = false;
            report.reason = Some(e.to_string());
            if report.seconds == 0.0 {
                report.seconds = started.elapsed().as_secs_f64();
            }
        }
    }
    report.seconds_total = started.elapsed().as_secs_f64();
    // Leave at once rather than after the TTL (best effort), with the
    // final counters for whoever watches the swarm.
    let leave = Announce {
        bytes_from_peers: report.bytes_from_peers,
        bytes_from_repository: report.bytes_from_repository,
        ..announce_body(None, &opts, report.ok, true)
    };
    let _ = client.swarm_announce(bucket, key, &leave).await;
    report
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    client: &ChunkClient,
    bucket: &str,
    key: &str,
    target: Target,
    listener: TcpListener,
    opts: &Options,
    report: &mut NodeReport,
    started: Instant,
) -> Result<(), SwarmError> {
    let (reply, doc) = join(client, bucket, key, opts).await?;
    let secret: [u8; 32] = hex::decode(reply.secret.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            SwarmError::Other("the tracker's swarm secret is not 32 hex bytes".into())
        })?;
    let digest: [u8; 32] = hex::decode(&reply.manifest_digest)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            SwarmError::Other("the tracker's manifest digest is not 32 hex bytes".into())
        })?;
    report.size = doc.size;
    let holdings: Arc<dyn Holdings> = match target {
        Target::Store(store) => {
            let d = doc.clone();
            Arc::new(StoreHoldings::new(store, d))
        }
        Target::OutDir(dir) => Arc::new(FileHoldings::create(&dir, &doc)?),
    };
    let sched = {
        let h = Arc::clone(&holdings);
        let d = doc.clone();
        tokio::task::spawn_blocking(move || Scheduler::new(&d, rand::random(), |id| h.has(id)))
            .await
            .map_err(|e| SwarmError::Other(format!("task failed: {e}")))?
    };
    report.chunks = sched.pieces().len();
    let held: Vec<u64> = (0..sched.pieces().len())
        .filter(|&p| sched.is_held(p))
        .map(|p| u64::from(sched.pieces()[p].len))
        .collect();
    report.chunks_already_held = held.len();
    report.bytes_already_held = held.iter().sum();
    let unique_bytes: u64 = sched.pieces().iter().map(|p| u64::from(p.len)).sum();
    if let Some(pr) = &opts.progress {
        pr.total.store(unique_bytes, Ordering::Relaxed);
        pr.done.store(report.bytes_already_held, Ordering::Relaxed);
    }
    let max_chunk = doc.chunks.iter().map(|c| c.len as usize).max().unwrap_or(0);
    let shared = Arc::new(Shared {
        digest,
        key: strato_trust::ControlKey::from_secret(&secret),
        sched: Mutex::new(sched),
        holdings,
        limits: wire::Limits { max_chunk },
        advertise: opts.advertise.clone(),
        bitmap_len: bitmap_len(doc.chunks.len()),
        opts: opts.clone(),
        bytes_from_peers: AtomicU64::new(0),
        bytes_from_repository: AtomicU64::new(0),
        bytes_served: AtomicU64::new(0),
        done_bytes: AtomicU64::new(0),
        known: Mutex::new(HashMap::new()),
        dropped: Mutex::new(Vec::new()),
    });
    for p in &reply.peers {
        shared.learn(&p.peer);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let server = tokio::spawn(serve_peers(Arc::clone(&shared), listener));
    let result = fetch_all(client, bucket, key, &shared, &reply, &mut tasks, started).await;
    // Stop downloading; serving goes on while seeding.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let fill = |report: &mut NodeReport| {
        report.bytes_from_peers = shared.bytes_from_peers.load(Ordering::Relaxed);
        report.bytes_from_repository = shared.bytes_from_repository.load(Ordering::Relaxed);
        report.peers_dropped = shared.dropped.lock().clone();
    };
    fill(report);
    report.seconds = started.elapsed().as_secs_f64();
    if let Err(e) = result {
        server.abort();
        report.bytes_served = shared.bytes_served.load(Ordering::Relaxed);
        return Err(e);
    }
    let h = Arc::clone(&shared.holdings);
    let image = tokio::task::spawn_blocking(move || h.finish())
        .await
        .map_err(|e| SwarmError::Other(format!("task failed: {e}")))??;
    report.image = Some(image);
    report.seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        bucket,
        key,
        seconds = report.seconds,
        "swarm image complete"
    );
    // Seeding: serve, and tell the tracker we hold everything.
    let seed_until = Instant::now() + opts.seed;
    let interval = Duration::from_secs(reply.interval_secs.clamp(1, 60));
    loop {
        let _ = client
            .swarm_announce(
                bucket,
                key,
                &announce_body(Some(&*shared), opts, true, false),
            )
            .await;
        let now = Instant::now();
        if now >= seed_until {
            break;
        }
        tokio::time::sleep(interval.min(seed_until - now)).await;
    }
    server.abort();
    fill(report);
    report.bytes_served = shared.bytes_served.load(Ordering::Relaxed);
    Ok(())
}

/// Download every missing piece: peers (connected as they become known)
/// and the repository for what no connected peer holds; re-announce on
/// the tracker's interval.
async fn fetch_all(
    client: &ChunkClient,
    bucket: &str,
    key: &str,
    shared: &Arc<Shared>,
    first: &AnnounceReply,
    tasks: &mut tokio::task::JoinSet<()>,
    started: Instant,
) -> Result<(), SwarmError> {
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for _ in 0..shared.opts.repository_window.max(1) {
        let (s, c, tx) = (Arc::clone(shared), client.clone(), fail_tx.clone());
        tasks.spawn(async move {
            if let Err(e) = from_repository(&s, &c).await {
                let _ = tx.send(e);
            }
        });
    }
    let interval = Duration::from_secs(first.interval_secs.clamp(1, 60));
    let mut next_announce = Instant::now() + interval;
    let mut next_id: PeerId = 0;
    loop {
        if shared.sched.lock().done() {
            return Ok(());
        }
        if let Ok(why) = fail_rx.try_recv() {
            return Err(SwarmError::Other(why));
        }
        if started.elapsed() > shared.opts.timeout {
            let missing = shared.sched.lock().missing();
            return Err(SwarmError::Other(format!(
                "not complete after {} s: {missing} chunks missing",
                shared.opts.timeout.as_secs()
            )));
        }
        let now = Instant::now();
        if now >= next_announce {
            next_announce = now + interval;
            match client
                .swarm_announce(
                    bucket,
                    key,
                    &announce_body(Some(&**shared), &shared.opts, false, false),
                )
                .await
            {
                Ok(r) => {
                    for p in &r.peers {
                        shared.learn(&p.peer);
                    }
                }
                Err(e) => tracing::warn!("announcing to the tracker: {e}"),
            }
        }
        for addr in shared.to_connect(now) {
            next_id += 1;
            let (s, id, tx) = (Arc::clone(shared), next_id, fail_tx.clone());
            tasks.spawn(async move {
                let end = peer::download(Arc::clone(&s), addr.clone(), id).await;
                if let PeerEnd::Lost(why) = &end {
                    tracing::debug!(peer = %addr, %why, "swarm peer connection ended");
                }
                if let Some(local) = s.ended(&addr, &end) {
                    let _ = tx.send(local);
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetch, one at a time, pieces no connected peer holds from the
/// repository (verified by the client against their ids).
async fn from_repository(shared: &Arc<Shared>, client: &ChunkClient) -> Result<(), String> {
    let mut failures = 0u32;
    loop {
        let pick = {
            let mut s = shared.sched.lock();
            if s.done() {
                return Ok(());
            }
            s.pick_for_repository(1).pop()
        };
        let Some(p) = pick else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = shared.sched.lock().pieces()[p].id;
        match client.get_chunk(&id).await {
            Ok(data) => match shared.keep(p, data).await {
                Ok(Some(n)) => {
                    failures = 0;
                    shared.bytes_from_repository.fetch_add(n, Ordering::Relaxed);
                }
                Ok(None) => {}
                Err(peer::Kept::Wrong(why) | peer::Kept::Local(why)) => {
                    shared.sched.lock().release(p);
                    return Err(format!("chunk {id} from the repository: {why}"));
                }
            },
            Err(e) => {
                shared.sched.lock().release(p);
                failures += 1;
                if failures >= 5 || e.is_not_found() {
                    return Err(format!("the repository: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }
}

/// Serves authenticated peers on `listener`, a bounded number at once.
async fn serve_peers(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%from, "swarm: too many peer connections; refused");
            continue;
        };
        let s = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = peer::serve(s, stream).await {
                tracing::debug!(%from, "swarm peer connection: {e}");
            }
            drop(permit);
        });
    }
}
