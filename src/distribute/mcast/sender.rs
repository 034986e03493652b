//! `strato mcast send`: one multicast stream to every registered receiver,
//! then repair rounds until each has every chunk or is evicted.
//!
//! Policy for slow or dead receivers (the others never wait forever):
//! - a receiver whose control connection drops is evicted at once;
//! - after each round every receiver answers (NACK or DONE) within the
//!   round timeout; no answer, or an answer showing no new pieces although
//!   pieces it missed were sent, is a stalled round;
//! - a round in which some receiver lost more than `loss_threshold` of what
//!   was sent to it halves the rate for the next round (never below
//!   `min_rate_bits`); clean rounds double it back up to `rate_bits`;
//! - `max_stalled_rounds` stalled rounds in a row, or still incomplete after
//!   `max_rounds`, evicts the receiver with the reason in the report.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::control::{self, Progress, SessionInfo, ToReceiver, ToSender, PROTOCOL};
use super::layout::{Layout, PieceSet};
use super::pacing::TokenBucket;
use super::report::{Outcome, ReceiverOutcome, RoundStats, SenderReport};
use super::wire::{self, Header};
use super::McastError;

mod data;
use crate::store::{ChunkId, ManifestEntry};
use chunk_api::ChunkSource;
use data::{send_marker, send_round, ChunkCache};

/// Where the image comes from: a repository's chunk API or the sender's
/// own store (both verify what they return).
pub type Source = Arc<dyn ChunkSource>;

/// An object's manifest fields as the receivers need them.
struct Object {
    size: u64,
    etag: String,
    profile: String,
    parts: u32,
    entries: Vec<ManifestEntry>,
}

async fn object(source: &Source, bucket: &str, key: &str) -> Result<Object, McastError> {
    let m = source.manifest(bucket, key).await?;
    Ok(Object {
        entries: m.entries(),
        size: m.size,
        etag: m.etag,
        profile: m.profile,
        parts: m.parts,
    })
}

async fn fetch_chunk(source: &Source, id: ChunkId) -> Result<Bytes, McastError> {
    source
        .chunk(id)
        .await?
        .ok_or_else(|| McastError::Protocol(format!("the image source lacks chunk {id}")))
}

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub group: SocketAddrV4,
    /// Local address multicast leaves through (unspecified: the routing default).
    pub interface: std::net::Ipv4Addr,
    pub ttl: u32,
    /// Chunk bytes per datagram.
    pub payload: usize,
    /// Link bits per second, headers included.
    pub rate_bits: u64,
    pub min_rate_bits: u64,
    /// Receivers to wait for before the first round.
    pub expect: usize,
    pub join_timeout: Duration,
    pub round_timeout: Duration,
    pub max_stalled_rounds: u32,
    pub max_rounds: u32,
    /// Fraction of a round's pieces a receiver may lose before the rate halves.
    pub loss_threshold: f64,
    /// Chunks kept in memory for repair rounds (beyond it they are fetched again).
    pub cache_bytes: u64,
    /// The repository's ticket for this group and object, with its control
    /// secret: a signed session (see `control`).
    pub session: Option<chain_broadcast::SessionAuth>,
    /// Control connections served at once; more are closed unanswered.
    pub max_connections: usize,
}

/// Counters a progress display reads while a session runs.
#[derive(Debug, Default)]
pub struct SendProgress {
    pub bytes_sent: AtomicU64,
    pub planned: AtomicU64,
}

enum Event {
    Joined {
        id: usize,
        addr: SocketAddr,
        held: Vec<(u32, u32)>,
        tx: mpsc::UnboundedSender<ToReceiver>,
    },
    Msg {
        id: usize,
        msg: ToSender,
    },
    Closed {
        id: usize,
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Active,
    Done,
    Evicted(String),
}

struct Peer {
    addr: SocketAddr,
    tx: Option<mpsc::UnboundedSender<ToReceiver>>,
    missing: PieceSet,
    state: State,
    progress: Progress,
    held_chunks: u64,
    joined_round: u32,
    stalled: u32,
    joined_at: Instant,
    finished: Option<Instant>,
}

impl Peer {
    fn evict(&mut self, reason: String) {
        tracing::warn!(receiver = %self.addr, "evicted: {reason}");
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(ToReceiver::Evicted {
                reason: reason.clone(),
            });
        }
        self.state = State::Evicted(reason);
        self.finished = Some(Instant::now());
    }

    /// A receiver that just joined holding the chunk ranges `held`.
    fn joined(
        layout: &Layout,
        addr: SocketAddr,
        held: Vec<(u32, u32)>,
        tx: mpsc::UnboundedSender<ToReceiver>,
        round: u32,
    ) -> Peer {
        let mut have = PieceSet::empty(layout.total_pieces);
        let mut held_chunks = 0u64;
        for (first, n) in held {
            for c in first..first.saturating_add(n) {
                if (c as usize) < layout.chunks.len() {
                    have.insert_range(layout.piece_range(c as usize));
                    held_chunks += 1;
                }
            }
        }
        tracing::info!(receiver = %addr, held_chunks, "receiver joined");
        Peer {
            addr,
            tx: Some(tx),
            missing: have.complement(),
            state: State::Active,
            progress: Progress::default(),
            held_chunks,
            joined_round: round,
            stalled: 0,
            joined_at: Instant::now(),
            finished: None,
        }
    }

    /// What the report says about this receiver.
    fn outcome(&self) -> ReceiverOutcome {
        ReceiverOutcome {
            addr: self.addr.to_string(),
            outcome: match self.state {
                State::Done => Outcome::Complete,
                _ => Outcome::Evicted,
            },
            reason: match &self.state {
                State::Evicted(r) => Some(r.clone()),
                State::Active => Some("still active at the end".into()),
                State::Done => None,
            },
            held_chunks: self.held_chunks,
            joined_round: self.joined_round,
            progress: self.progress.clone(),
            elapsed_ms: self
                .finished
                .unwrap_or_else(Instant::now)
                .duration_since(self.joined_at)
                .as_millis() as u64,
        }
    }
}

/// Runs one session on `listener` (the control channel) until every
/// receiver is complete or evicted.
pub async fn send(
    source: Source,
    bucket: &str,
    key: &str,
    listener: TcpListener,
    opts: &SendOptions,
    progress: Arc<SendProgress>,
) -> Result<SenderReport, McastError> {
    let mut s = SendSession::open(source, bucket, key, listener, opts, progress).await?;
    s.register_receivers().await;
    s.run_rounds().await?;
    Ok(s.finish())
}

/// One sending session: the layout and sockets, the receivers and what
/// each still misses, the rate and what the report will say.
struct SendSession<'a> {
    opts: &'a SendOptions,
    source: Source,
    started: Instant,
    /// What every receiver was told (bucket, key, size, group, payload).
    info: Arc<SessionInfo>,
    layout: Arc<Layout>,
    sock: Arc<UdpSocket>,
    session: u32,
    /// Joins, messages and hang-ups from the control connections.
    events: mpsc::UnboundedReceiver<Event>,
    /// Stops accepting control connections when the session ends.
    _acceptor: AbortOnDrop,
    /// Receiver frames dropped because they were not validly signed.
    forged: Arc<AtomicU64>,
    peers: HashMap<usize, Peer>,
    /// Receivers in the order they joined.
    order: Vec<usize>,
    round: u32,
    /// The rate of the next round.
    rate_bits: u64,
    cache: Arc<ChunkCache>,
    progress: Arc<SendProgress>,
    rounds: Vec<RoundStats>,
    datagrams: u64,
    bytes: u64,
}

impl<'a> SendSession<'a> {
    /// Reads the manifest, lays the object out in pieces, opens the
    /// multicast socket and starts accepting receivers on `listener`.
    async fn open(
        source: Source,
        bucket: &str,
        key: &str,
        listener: TcpListener,
        opts: &'a SendOptions,
        progress: Arc<SendProgress>,
    ) -> Result<SendSession<'a>, McastError> {
        let started = Instant::now();
        let obj = object(&source, bucket, key).await?;
        if let Some(auth) = &opts.session {
            check_own_ticket(auth, opts, bucket, key, &obj)?;
        }
        let payload = opts.payload.clamp(64, 65507 - wire::HEADER) as u32;
        let layout = Arc::new(Layout::new(&obj.entries, payload)?);
        let session = loop {
            let s: u32 = rand::random();
            if s != 0 {
                break s;
            }
        };
        let info = Arc::new(SessionInfo {
            protocol: PROTOCOL,
            session,
            group: opts.group.to_string(),
            payload,
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: obj.size,
            etag: obj.etag,
            profile: obj.profile,
            parts: obj.parts,
            entries: obj.entries.iter().map(|e| (e.id.0, e.len)).collect(),
            ticket: opts.session.as_ref().map(|a| a.ticket().to_text()),
            control_secret: opts.session.as_ref().map(|a| *a.secret()),
        });
        let sock = super::socket::sender(opts.interface, opts.ttl)
            .map_err(McastError::io("multicast sender socket"))?;
        tracing::info!(
            session = format!("{session:08x}"),
            chunks = layout.chunks.len(),
            pieces = layout.total_pieces,
            "multicast session ready"
        );
        let (ev_tx, events) = mpsc::unbounded_channel::<Event>();
        let forged = Arc::new(AtomicU64::new(0));
        let guard = PeerGuard {
            key: opts.session.as_ref().map(|a| a.control_key().clone()),
            forged: Arc::clone(&forged),
            max: opts.max_connections.max(1),
            open: Arc::new(AtomicU64::new(0)),
        };
        let acceptor = tokio::spawn(accept_loop(listener, Arc::clone(&info), ev_tx, guard));
        Ok(SendSession {
            opts,
            source,
            started,
            info,
            layout,
            sock: Arc::new(sock),
            session,
            events,
            _acceptor: AbortOnDrop(acceptor),
            forged,
            peers: HashMap::new(),
            order: Vec::new(),
            round: 0,
            rate_bits: opts.rate_bits,
            cache: Arc::new(ChunkCache::new(opts.cache_bytes)),
            progress,
            rounds: Vec::new(),
            datagrams: 0,
            bytes: 0,
        })
    }

    /// Applies a join or a hang-up (receivers joining now count from
    /// `round`); a receiver's message is handed back to the caller.
    fn on_event(&mut self, ev: Event, round: u32) -> Option<(usize, ToSender)> {
        match ev {
            Event::Joined { id, addr, held, tx } => {
                let peer = Peer::joined(&self.layout, addr, held, tx, round);
                self.peers.insert(id, peer);
                self.order.push(id);
                None
            }
            Event::Closed { id, why } => {
                if let Some(p) = self.peers.get_mut(&id) {
                    if p.state == State::Active {
                        p.tx.take();
                        p.evict(format!("control connection lost: {why}"));
                    }
                }
                None
            }
            Event::Msg { id, msg } => Some((id, msg)),
        }
    }

    /// Registration: waits for the expected receivers (bounded).
    async fn register_receivers(&mut self) {
        let deadline = tokio::time::Instant::now() + self.opts.join_timeout;
        while self.peers.len() < self.opts.expect.max(1) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ev)) => {
                    if let Some((id, msg)) = self.on_event(ev, self.round) {
                        tracing::debug!(id, "message before the first round ignored: {msg:?}");
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        "join timeout: {} of {} receivers joined",
                        self.peers.len(),
                        self.opts.expect
                    );
                    break;
                }
            }
        }
    }

    /// Rounds until no receiver is active: send what the active ones
    /// miss, collect their answers, evict the stalled, adapt the rate.
    async fn run_rounds(&mut self) -> Result<(), McastError> {
        loop {
            while let Ok(ev) = self.events.try_recv() {
                if let Some((id, msg)) = self.on_event(ev, self.round) {
                    tracing::debug!(id, "late message ignored: {msg:?}");
                }
            }
            let active: Vec<usize> = self
                .order
                .iter()
                .copied()
                .filter(|id| self.peers[id].state == State::Active)
                .collect();
            if active.is_empty() {
                return Ok(());
            }
            if self.round >= self.opts.max_rounds {
                let why = format!("incomplete after {} rounds", self.opts.max_rounds);
                for id in &active {
                    if let Some(p) = self.peers.get_mut(id) {
                        p.evict(why.clone());
                    }
                }
                return Ok(());
            }
            let before: HashMap<usize, u64> = active
                .iter()
                .map(|id| (*id, self.peers[id].missing.count()))
                .collect();
            self.run_round(&active).await?;
            let answered = self.collect_answers(&active).await;
            let worst_loss = self.evict_stalled(&active, &before, &answered);
            self.adjust_rate(worst_loss);
            self.round += 1;
        }
    }

    /// Multicasts every piece some receiver in `active` misses, then the
    /// end-of-round marker.
    async fn run_round(&mut self, active: &[usize]) -> Result<(), McastError> {
        let mut needs = PieceSet::empty(self.layout.total_pieces);
        for id in active {
            needs.union_with(&self.peers[id].missing);
        }
        let t0 = Instant::now();
        let needs = Arc::new(needs);
        let stats = send_round(
            &self.source,
            &self.layout,
            &needs,
            Arc::clone(&self.sock),
            self.opts.group,
            self.session,
            self.rate_bits,
            Arc::clone(&self.cache),
            Arc::clone(&self.progress),
        )
        .await?;
        self.datagrams += stats.0;
        self.bytes += stats.1;
        send_marker(&self.sock, self.opts.group, self.session, self.round).await;
        self.rounds.push(RoundStats {
            round: self.round,
            pieces: stats.0,
            bytes: stats.1,
            rate_bits: self.rate_bits,
            elapsed_ms: t0.elapsed().as_millis() as u64,
        });
        tracing::info!(
            round = self.round,
            pieces = stats.0,
            secs = t0.elapsed().as_secs_f64(),
            "round sent"
        );
        Ok(())
    }

    /// Asks every active receiver what it still misses and waits (up to
    /// the round timeout) for the answers. Returns who sent a NACK.
    async fn collect_answers(&mut self, active: &[usize]) -> Vec<usize> {
        let round = self.round;
        let mut pending: Vec<usize> = Vec::new();
        for id in active {
            if let Some(p) = self.peers.get_mut(id) {
                let ok =
                    p.tx.as_ref()
                        .map(|tx| tx.send(ToReceiver::RoundEnd { round }).is_ok())
                        .unwrap_or(false);
                if ok {
                    pending.push(*id);
                }
            }
        }
        let deadline = tokio::time::Instant::now() + self.opts.round_timeout;
        let mut answered: Vec<usize> = Vec::new();
        while !pending.is_empty() {
            let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.events.recv()).await else {
                break;
            };
            let Some((id, msg)) = self.on_event(ev, round + 1) else {
                let peers = &self.peers;
                pending.retain(|id| peers.get(id).is_some_and(|p| p.state == State::Active));
                continue;
            };
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            match msg {
                ToSender::Nack {
                    round: r,
                    missing,
                    progress,
                } if r == round => {
                    p.missing = PieceSet::from_ranges(self.layout.total_pieces, &missing);
                    p.progress = progress;
                    pending.retain(|x| *x != id);
                    answered.push(id);
                }
                ToSender::Done { progress } => {
                    tracing::info!(receiver = %p.addr, "receiver complete");
                    p.progress = progress;
                    p.missing = PieceSet::empty(self.layout.total_pieces);
                    p.state = State::Done;
                    p.finished = Some(Instant::now());
                    p.tx.take();
                    pending.retain(|x| *x != id);
                }
                other => tracing::debug!(id, "unexpected message ignored: {other:?}"),
            }
        }
        answered
    }

    /// Counts stalled rounds and evicts receivers stalled too long.
    /// Returns the worst loss (fraction of its missing pieces a receiver
    /// still misses) among those that answered.
    fn evict_stalled(
        &mut self,
        active: &[usize],
        before: &HashMap<usize, u64>,
        answered: &[usize],
    ) -> f64 {
        let mut worst_loss: f64 = 0.0;
        for id in active {
            let Some(p) = self.peers.get_mut(id) else {
                continue;
            };
            if p.state != State::Active {
                continue;
            }
            let was = before.get(id).copied().unwrap_or(0);
            let now = p.missing.count();
            let progressed = answered.contains(id) && (now < was || was == 0);
            if progressed {
                p.stalled = 0;
            } else {
                p.stalled += 1;
            }
            if answered.contains(id) && was >= 64 {
                worst_loss = worst_loss.max(now as f64 / was as f64);
            }
            if p.stalled >= self.opts.max_stalled_rounds {
                let why = if answered.contains(id) {
                    format!("no progress in {} rounds", p.stalled)
                } else {
                    format!(
                        "no answer within {:?} for {} rounds",
                        self.opts.round_timeout, p.stalled
                    )
                };
                p.evict(why);
            }
        }
        worst_loss
    }

    /// The next round's rate: halved after a lossy round (not below the
    /// minimum), doubled after a clean one (not above the maximum).
    fn adjust_rate(&mut self, worst_loss: f64) {
        let old = self.rate_bits;
        if worst_loss > self.opts.loss_threshold {
            self.rate_bits = (self.rate_bits / 2).max(self.opts.min_rate_bits);
        } else if worst_loss < self.opts.loss_threshold / 4.0 {
            self.rate_bits = (self.rate_bits.saturating_mul(2)).min(self.opts.rate_bits);
        }
        if self.rate_bits != old {
            tracing::info!(
                worst_loss,
                rate_bits = self.rate_bits,
                "rate adapted for the next round"
            );
        }
    }

    /// Ends the session (control connections closed, acceptor stopped)
    /// and reports on it.
    fn finish(mut self) -> SenderReport {
        let receivers = self
            .order
            .iter()
            .filter_map(|id| self.peers.get(id))
            .map(Peer::outcome)
            .collect();
        // Dropping the peers closes their control connections (writers end).
        drop(std::mem::take(&mut self.peers));
        SenderReport {
            bucket: self.info.bucket.clone(),
            key: self.info.key.clone(),
            size: self.info.size,
            session: format!("{:08x}", self.session),
            group: self.opts.group.to_string(),
            payload: self.info.payload,
            chunks: self.layout.chunks.len(),
            pieces: self.layout.total_pieces,
            expected: self.opts.expect,
            joined: self.order.len(),
            rounds: std::mem::take(&mut self.rounds),
            datagrams_sent: self.datagrams,
            bytes_sent: self.bytes,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            forged_control_frames: self.forged.load(Ordering::Relaxed),
            receivers,
        }
    }
}

/// A sender must not start a session its own ticket does not cover: every
/// receiver would refuse it (or the object changed since it was issued).
fn check_own_ticket(
    auth: &chain_broadcast::SessionAuth,
    opts: &SendOptions,
    bucket: &str,
    key: &str,
    obj: &Object,
) -> Result<(), McastError> {
    let t = &auth.ticket().ticket;
    let bad = |why: String| Err(McastError::Protocol(format!("session ticket: {why}")));
    if t.bucket != bucket || t.key != key {
        return bad(format!(
            "it is for {}/{}, not {bucket}/{key}",
            t.bucket, t.key
        ));
    }
    if t.audience != strato_trust::Audience::Group(opts.group.to_string()) {
        return bad(format!("it is not for group {}", opts.group));
    }
    if t.manifest_digest != super::manifest_digest(&obj.entries) || t.size != obj.size {
        return bad(format!(
            "{bucket}/{key} changed since the ticket was issued"
        ));
    }
    Ok(())
}

/// What every control connection shares: the session's control key, the
/// count of dropped forgeries, and the bound on open connections.
#[derive(Clone)]
struct PeerGuard {
    key: Option<strato_trust::ControlKey>,
    forged: Arc<AtomicU64>,
    max: usize,
    open: Arc<AtomicU64>,
}

/// Refusals are logged at most 20 per 10 s (a flood must not flood the log).
static REFUSALS: std::sync::LazyLock<strato_trust::LogLimiter> =
    std::sync::LazyLock::new(|| strato_trust::LogLimiter::new(Duration::from_secs(10), 20));

fn log_refusal(peer: SocketAddr, why: &str) {
    if let Some(suppressed) = REFUSALS.allow() {
        tracing::warn!(%peer, suppressed, "multicast control: {why}");
    }
}

/// Decrements the open-connection count when a connection task ends.
struct OpenSlot(Arc<AtomicU64>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    info: Arc<SessionInfo>,
    events: mpsc::UnboundedSender<Event>,
    guard: PeerGuard,
) {
    let mut next_id = 0usize;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if guard.open.load(Ordering::Relaxed) >= guard.max as u64 {
            log_refusal(addr, "too many control connections, one closed unanswered");
            drop(stream);
            continue;
        }
        guard.open.fetch_add(1, Ordering::Relaxed);
        let slot = OpenSlot(Arc::clone(&guard.open));
        let _ = stream.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        let (info, events, guard) = (Arc::clone(&info), events.clone(), guard.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_peer(id, stream, addr, info, events, &guard).await {
                tracing::info!(peer = %addr, "control connection: {e}");
            }
        });
    }
}

/// Handshake, then relay the peer's messages as events and the
/// coordinator's messages to the peer.
async fn serve_peer(
    id: usize,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    info: Arc<SessionInfo>,
    events: mpsc::UnboundedSender<Event>,
    guard: &PeerGuard,
) -> Result<(), McastError> {
    const HANDSHAKE: Duration = Duration::from_secs(30);
    // In a signed session only frames under the control key count; the
    // others are dropped and counted (see `control`).
    let mut last_seq = 0u64;
    let mut open = |frame: ToSender| -> Option<ToSender> {
        let Some(key) = &guard.key else {
            return Some(frame);
        };
        match control::open_to_sender(key, info.session, last_seq, &frame) {
            Some((seq, msg)) => {
                last_seq = seq;
                Some(msg)
            }
            None => {
                guard.forged.fetch_add(1, Ordering::Relaxed);
                log_refusal(addr, "control frame without a valid tag dropped");
                None
            }
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let hello = tokio::time::timeout(HANDSHAKE, control::read_frame::<_, ToSender>(&mut rd))
        .await
        .map_err(|_| McastError::Timeout("no HELLO".into()))??;
    match hello {
        Some(ToSender::Hello { protocol }) if protocol == PROTOCOL => {}
        other => {
            return Err(McastError::Protocol(format!(
                "expected HELLO v{PROTOCOL}, got {other:?}"
            )))
        }
    }
    control::write_frame(&mut wr, &ToReceiver::Session(Box::new((*info).clone()))).await?;
    let deadline = tokio::time::Instant::now() + HANDSHAKE;
    let held = loop {
        let frame = tokio::time::timeout_at(deadline, control::read_frame(&mut rd))
            .await
            .map_err(|_| McastError::Timeout("no JOIN".into()))??;
        let Some(frame) = frame else {
            return Err(McastError::Protocol("closed before JOIN".into()));
        };
        match open(frame) {
            Some(ToSender::Join { held }) => break held,
            None => continue,
            Some(other) => {
                return Err(McastError::Protocol(format!(
                    "expected JOIN, got {other:?}"
                )))
            }
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<ToReceiver>();
    if events.send(Event::Joined { id, addr, held, tx }).is_err() {
        return Ok(());
    }
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if control::write_frame(&mut wr, &msg).await.is_err() {
                break;
            }
        }
        // The coordinator is done with this peer: close our side.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    });
    let why = loop {
        match control::read_frame::<_, ToSender>(&mut rd).await {
            Ok(Some(frame)) => {
                let Some(msg) = open(frame) else { continue };
                if events.send(Event::Msg { id, msg }).is_err() {
                    break "session over".to_string();
                }
            }
            Ok(None) => break "closed by the receiver".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    let _ = events.send(Event::Closed { id, why });
    let _ = writer.await;
    Ok(())
}
