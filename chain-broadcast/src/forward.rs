//! The downstream side of a hop, shared by the sender and every relay:
//! connect to the next live node, learn what it needs, forward chunks as
//! they arrive, and bypass the node if it fails.
//!
//! Invariant kept across bypasses: after `forward`/`finish`, the current
//! link has been sent every chunk it needs that this hop has seen or holds,
//! so once the upstream's END arrives the link can complete.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::auth::SessionAuth;
use crate::codec::{FrameReader, FrameWriter, Liveness};
use crate::error::{Error, Result};
use crate::frame::{Frame, Hello, PROTOCOL_VERSION};
use crate::manifest::{ChunkId, TransferInfo};
use crate::options::Progress;
use crate::report::NodeReport;

/// What a hop knows about its transfer.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub info: TransferInfo,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub finish_timeout: Duration,
    pub max_frame: u32,
    /// Set in a signed session: HELLO carries it, HAVE and REPORT from
    /// the link must come with a valid TAG.
    pub auth: Option<SessionAuth>,
    /// Control frames from downstream whose tag did not verify.
    pub forged: Arc<AtomicU64>,
}

impl Ctx {
    pub fn keepalive_every(&self) -> Duration {
        (self.io_timeout / 3).max(Duration::from_millis(10))
    }
}

/// Fetches a chunk this hop has already seen or holds, for resending after a
/// bypass.
pub(crate) type Resupply = Arc<dyn Fn(ChunkId) -> BoxFuture<'static, Result<Bytes>> + Send + Sync>;

/// Input of the forwarding task.
pub(crate) enum Input {
    Chunk(ChunkId, Bytes),
    End,
}

struct Link {
    addr: SocketAddr,
    /// Nodes after this one.
    rest: usize,
    w: FrameWriter<OwnedWriteHalf>,
    /// When the link last said anything (KEEPALIVE included).
    live: Arc<Liveness>,
    /// Frames from the link, read by a task of their own so an ERROR sent
    /// mid-stream is seen at once (and before any reset can discard it).
    events: mpsc::Receiver<Result<Frame>>,
    _reader: AbortOnDrop<()>,
    have: Vec<bool>,
    needs: HashSet<ChunkId>,
    sent: HashSet<ChunkId>,
}

impl Link {
    /// Before END the link has nothing to say but KEEPALIVE; anything else
    /// is a failure.
    fn early_event(&mut self) -> Option<Error> {
        match self.events.try_recv() {
            Ok(Ok(Frame::Keepalive)) => None,
            Ok(Ok(Frame::Error(e))) => Some(Error::Peer(e)),
            Ok(Ok(f)) => Some(Error::Unexpected {
                expected: "nothing before END",
                got: f.kind_name(),
            }),
            Ok(Err(e)) => Some(e),
            Err(_) => None,
        }
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct Downstream {
    ctx: Arc<Ctx>,
    /// Candidates, in chain order.
    chain: Vec<SocketAddr>,
    /// Index in `chain` of the next candidate to try after the link.
    next: usize,
    link: Option<Link>,
    /// Results collected so far (failed nodes, then the link's REPORT).
    reports: Vec<NodeReport>,
    /// Ids this hop has been given by its upstream.
    received: HashSet<ChunkId>,
    /// Ids the upstream will send; anything else this hop holds already.
    expected: HashSet<ChunkId>,
    pub bytes_sent: u64,
    progress: Option<Arc<Progress>>,
}

impl Downstream {
    /// Connects to the first live node of `chain` (possibly none).
    pub async fn connect(
        ctx: Arc<Ctx>,
        chain: Vec<SocketAddr>,
        progress: Option<Arc<Progress>>,
    ) -> Self {
        let mut d = Downstream {
            ctx,
            chain,
            next: 0,
            link: None,
            reports: Vec::new(),
            received: HashSet::new(),
            expected: HashSet::new(),
            bytes_sent: 0,
            progress,
        };
        d.connect_next().await;
        d
    }

    /// The HAVE of the current link, if any.
    pub fn have(&self) -> Option<&[bool]> {
        self.link.as_ref().map(|l| l.have.as_slice())
    }

    /// Declares which ids the upstream will send.
    pub fn set_expected(&mut self, expected: HashSet<ChunkId>) {
        self.expected = expected;
    }

    async fn connect_next(&mut self) {
        while self.next < self.chain.len() {
            let i = self.next;
            self.next += 1;
            let addr = self.chain[i];
            match self.handshake(i).await {
                Ok(link) => {
                    debug!(transfer = self.ctx.info.transfer_id, %addr, "linked");
                    self.link = Some(link);
                    return;
                }
                Err(e) => {
                    warn!(transfer = self.ctx.info.transfer_id, %addr, error = %e, "node unreachable, bypassing it");
                    self.reports
                        .push(NodeReport::failed(addr, format!("bypassed: {e}")));
                }
            }
        }
    }

    async fn handshake(&self, i: usize) -> Result<Link> {
        let ctx = &self.ctx;
        let addr = self.chain[i];
        let rest = self.chain.len() - i - 1;
        let stream = match tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(addr)).await
        {
            Ok(s) => s?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: "connecting",
                    secs: ctx.connect_timeout.as_secs_f64(),
                })
            }
        };
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let live = Liveness::new();
        let mut w = FrameWriter::new(w, ctx.io_timeout).with_liveness(Arc::clone(&live));
        let mut r = FrameReader::new(r, ctx.max_frame);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            transfer_id: ctx.info.transfer_id,
            name: ctx.info.name.clone(),
            connect_timeout: ctx.connect_timeout,
            io_timeout: ctx.io_timeout,
            finish_timeout: ctx.finish_timeout,
            chain: self.chain[i..].to_vec(),
            manifest: Arc::clone(&ctx.info.manifest),
            session: ctx.auth.as_ref().map(SessionAuth::hello_session),
        };
        w.send_now(&Frame::Hello(hello)).await?;
        // The node answers once it has looked at its store and linked the
        // rest of the chain; meanwhile it sends KEEPALIVE, so a slow store
        // is not mistaken for a dead node. The overall limit grows with the
        // chain behind it, like the REPORT wait.
        let idle = ctx.io_timeout;
        let limit = ctx.finish_timeout.saturating_mul(rest as u32 + 1) + idle;
        let deadline = Instant::now() + limit;
        let have = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: "waiting for HAVE",
                    secs: limit.as_secs_f64(),
                });
            }
            match r.read_timeout(left.min(idle), "HAVE").await? {
                Frame::Have(h) => break h,
                Frame::Keepalive => continue,
                Frame::Error(e) => return Err(Error::Peer(e)),
                f => {
                    return Err(Error::Unexpected {
                        expected: "HAVE",
                        got: f.kind_name(),
                    })
                }
            }
        };
        if let Some(auth) = &ctx.auth {
            let tag = loop {
                match r.read_timeout(idle, "TAG").await? {
                    Frame::Keepalive => continue,
                    Frame::Tag(t) => break Some(t),
                    Frame::Error(e) => return Err(Error::Peer(e)),
                    _ => break None,
                }
            };
            // One bool per chunk: cloning it once per link is cheap.
            let frame = Frame::Have(have.clone());
            if !tag.is_some_and(|t| auth.verify(ctx.info.transfer_id, addr, &frame, &t)) {
                ctx.forged.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Forged("HAVE"));
            }
        }
        let chunks = &ctx.info.manifest.chunks;
        if have.len() != chunks.len() {
            return Err(Error::Invalid(format!(
                "HAVE lists {} entries for a manifest of {}",
                have.len(),
                chunks.len()
            )));
        }
        let needs = chunks
            .iter()
            .zip(&have)
            .filter(|(_, h)| !**h)
            .map(|(c, _)| c.id)
            .collect();
        live.touch();
        let (tx, events) = mpsc::channel(8);
        let heard = Arc::clone(&live);
        let reader = tokio::spawn(async move {
            loop {
                let ev = match r.read_frame().await {
                    Ok(Some(Frame::Keepalive)) => {
                        heard.touch();
                        continue;
                    }
                    Ok(Some(f)) => {
                        heard.touch();
                        Ok(f)
                    }
                    Ok(None) => Err(Error::Closed("the transfer to end")),
                    Err(e) => Err(e),
                };
                let last = ev.is_err();
                if tx.send(ev).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Link {
            addr,
            rest,
            w,
            live,
            events,
            _reader: AbortOnDrop(reader),
            have,
            needs,
            sent: HashSet::new(),
        })
    }

    /// Drops the link after `err`, records it as failed, and links to the
    /// next live node, resending what that node needs and will not get from
    /// upstream.
    async fn bypass(&mut self, mut err: Error, resupply: &Resupply) {
        loop {
            let Some(mut link) = self.link.take() else {
                return;
            };
            // A peer that refused our data usually said why first.
            if !matches!(err, Error::Peer(_)) {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
                while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, link.events.recv()).await
                {
                    match ev {
                        Ok(Frame::Error(reason)) => {
                            err = Error::Peer(reason);
                            break;
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
            }
            warn!(transfer = self.ctx.info.transfer_id, addr = %link.addr, error = %err, "downstream node failed, bypassing it");
            self.reports
                .push(NodeReport::failed(link.addr, format!("bypassed: {err}")));
            drop(link);
            self.connect_next().await;
            let Some(link) = self.link.as_mut() else {
                return;
            };
            let resend: Vec<ChunkId> = self
                .ctx
                .info
                .manifest
                .distinct()
                .into_iter()
                .map(|c| c.id)
                .filter(|id| {
                    link.needs.contains(id)
                        && (self.received.contains(id) || !self.expected.contains(id))
                })
                .collect();
            debug!(transfer = self.ctx.info.transfer_id, addr = %link.addr, chunks = resend.len(), "resuming after bypass");
            let mut failed = None;
            for id in resend {
                let data = match resupply(id).await {
                    Ok(d) => d,
                    Err(e) => {
                        self.give_up(&format!("predecessor could not resupply chunk {id}: {e}"));
                        return;
                    }
                };
                if let Err(e) = link.w.send_data(&id, &data).await {
                    failed = Some(e);
                    break;
                }
                link.sent.insert(id);
                self.bytes_sent += data.len() as u64;
                if let Some(p) = &self.progress {
                    p.bytes_sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                    p.chunks_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            if failed.is_none() {
                if let Err(e) = link.w.flush().await {
                    failed = Some(e);
                }
            }
            match failed {
                None => return,
                Some(e) => err = e,
            }
        }
    }

    /// This hop cannot serve anything downstream any more.
    fn give_up(&mut self, why: &str) {
        warn!(
            transfer = self.ctx.info.transfer_id,
            why, "giving up on the rest of the chain"
        );
        self.link = None;
        for addr in &self.chain[self.next.saturating_sub(1)..] {
            if !self.reports.iter().any(|r| r.addr == *addr) {
                self.reports.push(NodeReport::failed(*addr, why));
            }
        }
        self.next = self.chain.len();
    }

    /// Sends `data` on if the link still needs it.
    pub async fn forward(&mut self, id: ChunkId, data: Bytes, resupply: &Resupply) {
        self.received.insert(id);
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if let Some(e) = link.early_event() {
            // The bypass resends `id` too: it is in `received` already.
            return self.bypass(e, resupply).await;
        }
        if !link.needs.contains(&id) || link.sent.contains(&id) {
            return;
        }
        match link.w.send_data(&id, &data).await {
            Ok(()) => {
                link.sent.insert(id);
                self.bytes_sent += data.len() as u64;
                if let Some(p) = &self.progress {
                    p.bytes_sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                    p.chunks_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            // As above, the bypass resends `id`.
            Err(e) => self.bypass(e, resupply).await,
        }
    }

    pub async fn flush(&mut self, resupply: &Resupply) {
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.w.flush().await {
                self.bypass(e, resupply).await;
            }
        }
    }

    pub async fn keepalive(&mut self, resupply: &Resupply) {
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.w.send_now(&Frame::Keepalive).await {
                self.bypass(e, resupply).await;
            }
        }
    }

    /// Sends END and collects the reports of every node downstream.
    pub async fn finish(mut self, resupply: &Resupply) -> (Vec<NodeReport>, u64) {
        loop {
            let Some(link) = self.link.as_mut() else {
                return (self.reports, self.bytes_sent);
            };
            let io = self.ctx.io_timeout;
            // The link sends KEEPALIVE while it drains, finishes and waits
            // for its own successor, so silence longer than the io limit
            // means it is gone. Each node bounds its own finishing by
            // finish_timeout, so a hop with `rest` nodes behind its link
            // needs at most (rest + 1) of those: the overall limit is
            // always longer than the limits of the hops below.
            let limit = self.ctx.finish_timeout.saturating_mul(link.rest as u32 + 1) + io;
            let deadline = Instant::now() + limit;
            let res: Result<Vec<NodeReport>> = async {
                link.w.send_now(&Frame::End).await?;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Timeout {
                            what: "waiting for REPORT",
                            secs: limit.as_secs_f64(),
                        });
                    }
                    let ev = match tokio::time::timeout(left.min(io), link.events.recv()).await {
                        Ok(Some(ev)) => ev?,
                        Ok(None) => return Err(Error::Closed("REPORT")),
                        Err(_) if link.live.heard_within(io) => continue,
                        Err(_) => {
                            return Err(Error::Timeout {
                                what: "waiting for REPORT",
                                secs: io.as_secs_f64(),
                            })
                        }
                    };
                    match ev {
                        Frame::Report(v) => {
                            let Some(auth) = &self.ctx.auth else {
                                return Ok(v);
                            };
                            let frame = Frame::Report(v.clone());
                            let tag = loop {
                                let left = deadline.saturating_duration_since(Instant::now());
                                match tokio::time::timeout(left.min(io), link.events.recv()).await {
                                    Ok(Some(Ok(Frame::Keepalive))) => continue,
                                    Ok(Some(Ok(Frame::Tag(t)))) => break Some(t),
                                    _ => break None,
                                }
                            };
                            let id = self.ctx.info.transfer_id;
                            if tag.is_some_and(|t| auth.verify(id, link.addr, &frame, &t)) {
                                return Ok(v);
                            }
                            self.ctx.forged.fetch_add(1, Ordering::Relaxed);
                            return Err(Error::Forged("REPORT"));
                        }
                        Frame::Error(e) => return Err(Error::Peer(e)),
                        f => {
                            return Err(Error::Unexpected {
                                expected: "REPORT",
                                got: f.kind_name(),
                            })
                        }
                    }
                }
            }
            .await;
            match res {
                Ok(v) => {
                    self.link = None;
                    self.reports.extend(v);
                    return (self.reports, self.bytes_sent);
                }
                Err(e) => self.bypass(e, resupply).await,
            }
        }
    }
}

/// Runs a hop's forwarding: chunks in, downstream out, keepalives when
/// idle. Returns `None` if the input ended without END (the upstream
/// failed): the link is dropped so the nodes below abort too.
pub(crate) async fn pump(
    mut ds: Downstream,
    mut rx: mpsc::Receiver<Input>,
    resupply: Resupply,
) -> Option<(Vec<NodeReport>, u64)> {
    let every = ds.ctx.keepalive_every();
    loop {
        let msg = match tokio::time::timeout(every, rx.recv()).await {
            Err(_) => {
                ds.keepalive(&resupply).await;
                continue;
            }
            Ok(None) => return None,
            Ok(Some(m)) => m,
        };
        match msg {
            Input::Chunk(id, data) => {
                ds.forward(id, data, &resupply).await;
                if rx.is_empty() {
                    ds.flush(&resupply).await;
                }
            }
            Input::End => return Some(ds.finish(&resupply).await),
        }
    }
}
