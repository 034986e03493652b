//! A node of the chain: receive from upstream, verify, store and forward.
//!
//! One connection runs three stages joined by bounded channels, so memory is
//! bounded and the slowest of (upstream link, local store, downstream link)
//! sets the pace of the whole chain:
//!
//! ```text
//! upstream ──▶ reader (parse, verify BLAKE3) ──▶ store stage (blocking thread, sink.put)
//!                                          └───▶ forward stage ──▶ downstream
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::auth::{check_hello, SessionAuth};
use crate::codec::{FrameReader, FrameWriter};
use crate::error::{BoxError, Error, Result};
use crate::forward::{pump, AbortOnDrop, Ctx, Downstream, Input, Resupply};
use crate::frame::{Frame, HEADER_LEN};
use crate::manifest::{ChunkId, Manifest, TransferInfo};
use crate::options::{queue_len, ServeOptions};
use crate::report::NodeReport;
use crate::sink::{ChunkSink, SinkFactory};

/// Accepts chain connections on `listener` until the future is dropped.
/// Dropping it (or aborting its task) stops every transfer of this node,
/// closing their sockets, as a crashed node would.
pub async fn serve(
    listener: TcpListener,
    factory: Arc<dyn SinkFactory>,
    opts: ServeOptions,
) -> std::io::Result<()> {
    serve_until(listener, factory, opts, std::future::pending()).await
}

/// Like [`serve`], but when `shutdown` completes it stops accepting and
/// returns once the transfers under way have ended (a graceful stop).
pub async fn serve_until(
    listener: TcpListener,
    factory: Arc<dyn SinkFactory>,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok((sock, peer)) => {
                    // Refusals hold a socket for up to two seconds each: past
                    // twice the limit a flood is dropped without an answer.
                    if sessions.len() >= 2 * opts.max_sessions.max(1) {
                        log_refusal(peer, "connection flood: dropped without an answer");
                        drop(sock);
                        continue;
                    }
                    if sessions.len() >= opts.max_sessions.max(1) {
                        warn!(%peer, "too many connections, refusing one");
                        sessions.spawn(refuse(sock, opts.hello_timeout));
                        continue;
                    }
                    sessions.spawn(session(sock, peer, Arc::clone(&factory), opts.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    info!(
        running = sessions.len(),
        "stopping: waiting for transfers under way"
    );
    while sessions.join_next().await.is_some() {}
    Ok(())
}

/// Refused sessions are logged at most 20 per 10 s, with a count of the
/// ones left out: a flood of forged sessions must not flood the log.
static REFUSALS: std::sync::LazyLock<strato_trust::LogLimiter> =
    std::sync::LazyLock::new(|| strato_trust::LogLimiter::new(Duration::from_secs(10), 20));

fn log_refusal(peer: SocketAddr, why: &str) {
    if let Some(suppressed) = REFUSALS.allow() {
        warn!(%peer, suppressed, "chain session refused: {why}");
    }
}

/// Tells a peer this node is busy, then lets it hang up first (see
/// `session`), for two seconds at most.
async fn refuse(sock: TcpStream, limit: Duration) {
    let limit = limit.min(Duration::from_secs(2));
    let (r, w) = sock.into_split();
    let mut w = FrameWriter::new(w, limit);
    let _ = w
        .send_now(&Frame::Error(
            "node busy: too many transfers at once".into(),
        ))
        .await;
    let mut r = FrameReader::new(r, HEADER_LEN as u32);
    let _ = tokio::time::timeout(limit, r.discard_until_eof()).await;
}

/// A node running in a background task; stopped when dropped.
pub struct Node {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Node {
    /// Binds `addr` (port 0 picks one) and serves on it.
    pub async fn spawn(
        addr: SocketAddr,
        factory: Arc<dyn SinkFactory>,
        opts: ServeOptions,
    ) -> std::io::Result<Node> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, factory, opts));
        Ok(Node { addr, task })
    }

    /// Where the node listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the node at once: listener and every connection closed.
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::storage(e)),
        Err(e) => Err(Error::storage(format!("storage task failed: {e}"))),
    }
}

/// Which chunks the store stage has written, for resupply after a bypass.
#[derive(Default)]
struct Avail {
    set: Mutex<HashSet<ChunkId>>,
    closed: AtomicBool,
    notify: Notify,
}

impl Avail {
    fn contains(&self, id: &ChunkId) -> bool {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(id)
    }

    fn add(&self, id: ChunkId) {
        self.set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        self.notify.notify_waiters();
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn wait(&self, id: ChunkId, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.contains(&id) {
                return Ok(());
            }
            if self.closed.load(Ordering::SeqCst) {
                return Err(Error::Storage(format!("chunk {id} was not stored")));
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return Err(Error::Timeout {
                    what: "waiting for the local store",
                    secs: limit.as_secs_f64(),
                });
            }
        }
    }
}

fn store_stage(
    sink: Arc<dyn ChunkSink>,
    mut rx: mpsc::Receiver<(ChunkId, Bytes)>,
    avail: Arc<Avail>,
) -> std::result::Result<(), String> {
    let mut err = None;
    // Keep draining after a failure so the reader never blocks on us; the
    // node still relays for the others and reports itself failed.
    while let Some((id, data)) = rx.blocking_recv() {
        if err.is_some() {
            continue;
        }
        match sink.put(&id, data) {
            Ok(()) => avail.add(id),
            Err(e) => err = Some(format!("storing chunk {id}: {e}")),
        }
    }
    avail.close();
    err.map_or(Ok(()), Err)
}

/// Checks a DATA frame against the manifest before anything is done with it.
pub(crate) fn verify_chunk(lens: &HashMap<ChunkId, u32>, id: &ChunkId, data: &[u8]) -> Result<()> {
    let Some(len) = lens.get(id) else {
        return Err(Error::BadChunk {
            id: id.to_hex(),
            why: "not in the manifest".into(),
        });
    };
    if data.len() != *len as usize {
        return Err(Error::BadChunk {
            id: id.to_hex(),
            why: format!("{} bytes, manifest says {len}", data.len()),
        });
    }
    let got = ChunkId::of(data);
    if got != *id {
        return Err(Error::BadChunk {
            id: id.to_hex(),
            why: format!("bytes hash to {got}"),
        });
    }
    Ok(())
}

type UpWriter = FrameWriter<tokio::net::tcp::OwnedWriteHalf>;

/// The write side towards the upstream, shared by the session and its
/// keepalive ticker.
struct Upstream {
    w: tokio::sync::Mutex<UpWriter>,
    base: Instant,
    /// When (ms after `base`, plus one) the reader started waiting for room
    /// in the store queue; 0 when it is not waiting.
    store_wait: AtomicU64,
}

impl Upstream {
    fn store_wait_begins(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.store_wait.store(ms + 1, Ordering::Relaxed);
    }

    fn store_wait_ends(&self) {
        self.store_wait.store(0, Ordering::Relaxed);
    }

    /// A store that has not taken a chunk for `limit` is wedged.
    fn store_wedged(&self, limit: Duration) -> bool {
        match self.store_wait.load(Ordering::Relaxed) {
            0 => false,
            since => {
                let since = self.base + Duration::from_millis(since - 1);
                since.elapsed() > limit
            }
        }
    }
}

/// Tells the upstream this node is alive, every `every`, for as long as it
/// is making progress or waiting on something that is itself bounded (its
/// successor, its own finish). It falls silent when the local store stops
/// taking chunks, so the upstream times the node out and bypasses it: a
/// wedged node is never kept alive by its own keepalives.
async fn keepalive_ticker(up: Arc<Upstream>, every: Duration, wedged_after: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if up.store_wedged(wedged_after) {
            continue;
        }
        if up.w.lock().await.send_now(&Frame::Keepalive).await.is_err() {
            return;
        }
    }
}

async fn session(
    sock: TcpStream,
    peer: SocketAddr,
    factory: Arc<dyn SinkFactory>,
    opts: ServeOptions,
) {
    let _ = sock.set_nodelay(true);
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(%peer, error = %e, "no local address for a connection");
            return;
        }
    };
    let (r, w) = sock.into_split();
    let mut up_r = FrameReader::new(r, opts.max_frame);
    let up = Arc::new(Upstream {
        w: tokio::sync::Mutex::new(FrameWriter::new(w, opts.hello_timeout)),
        base: Instant::now(),
        store_wait: AtomicU64::new(0),
    });
    if let Err(e) = run(&mut up_r, &up, local, factory, &opts).await {
        match &e {
            Error::Refused(why) => log_refusal(peer, why),
            _ => warn!(%peer, error = %e, "chain transfer failed"),
        }
        // Best effort: the upstream may be gone already.
        let _ =
            up.w.lock()
                .await
                .send_now(&Frame::Error(e.to_string()))
                .await;
        // Closing with unread input would reset the connection, and a reset
        // can destroy the ERROR before the upstream reads it. Drain until
        // the upstream, having read it, hangs up.
        let _ = tokio::time::timeout(Duration::from_secs(2), up_r.discard_until_eof()).await;
    }
}

async fn run(
    up_r: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    up: &Arc<Upstream>,
    local: SocketAddr,
    factory: Arc<dyn SinkFactory>,
    opts: &ServeOptions,
) -> Result<()> {
    let start = Instant::now();
    let (ctx, me, chain) = read_hello(up_r, local, opts).await?;
    up.w.lock().await.set_timeout(ctx.io_timeout);
    let ticker = AbortOnDrop(tokio::spawn(keepalive_ticker(
        Arc::clone(up),
        ctx.keepalive_every(),
        ctx.io_timeout,
    )));
    info!(transfer = ctx.info.transfer_id, name = %ctx.info.name, %me,
          chunks = ctx.info.manifest.len(), downstream = chain.len(), "transfer started");

    let (mut t, mut ds, own_have_v) =
        Transfer::open(Arc::clone(&ctx), me, start, factory, chain).await?;
    t.announce_have(&mut ds, &own_have_v, up).await?;
    let stages = t.start_stages(ds, opts);
    if let Err(e) = t.relay_chunks(up_r, up, &stages).await {
        stages.abort();
        t.abort_sink().await;
        return Err(e);
    }
    let Stages {
        wtx,
        store,
        ftx,
        fwd,
    } = stages;
    let _ = ftx.send(Input::End).await;
    drop(wtx);
    let reports = t.finish(store, fwd).await;
    drop(ticker);
    send_control(up, &ctx, me, Frame::Report(reports)).await?;
    Ok(())
}

/// Sends a control frame upstream, followed by its TAG in a signed session.
async fn send_control(up: &Upstream, ctx: &Ctx, me: SocketAddr, frame: Frame) -> Result<()> {
    let tag = ctx
        .auth
        .as_ref()
        .map(|a| a.tag(ctx.info.transfer_id, me, &frame));
    let mut w = up.w.lock().await;
    match tag {
        None => w.send_now(&frame).await,
        Some(t) => {
            w.send(&frame).await?;
            w.send_now(&Frame::Tag(t)).await
        }
    }
}

/// Reads and checks the upstream's HELLO. Returns the transfer's context,
/// this node's address and the nodes after it.
async fn read_hello(
    up_r: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    local: SocketAddr,
    opts: &ServeOptions,
) -> Result<(Arc<Ctx>, SocketAddr, Vec<SocketAddr>)> {
    let hello = match up_r.read_timeout(opts.hello_timeout, "HELLO").await? {
        Frame::Hello(h) => h,
        f => {
            return Err(Error::Unexpected {
                expected: "HELLO",
                got: f.kind_name(),
            })
        }
    };
    let Some(&me) = hello.chain.first() else {
        return Err(Error::Invalid("empty chain".into()));
    };
    hello
        .manifest
        .validate(opts.max_frame.saturating_sub(32))
        .map_err(Error::Invalid)?;
    // Before anything is opened or written: a signed-session node refuses
    // whatever the repository did not sign for it (see `auth`).
    let auth = match (&opts.trust, &hello.session) {
        (Some(trust), _) => Some(check_hello(trust, local, &hello, strato_trust::now_unix())?),
        // An open node still tags its control frames for a signed sender.
        (None, Some(sess)) => {
            let st = strato_trust::SignedTicket::parse(&sess.ticket)
                .map_err(|e| Error::Refused(e.to_string()))?;
            Some(SessionAuth::new(st, sess.secret).map_err(|e| Error::Refused(e.to_string()))?)
        }
        (None, None) => None,
    };
    let ctx = Arc::new(Ctx {
        info: TransferInfo {
            transfer_id: hello.transfer_id,
            name: hello.name,
            manifest: hello.manifest,
        },
        // Timeouts come from the peer: keep them within sane bounds so a
        // bad HELLO cannot make this node wait for weeks.
        connect_timeout: hello
            .connect_timeout
            .clamp(Duration::from_millis(10), Duration::from_secs(300)),
        io_timeout: hello
            .io_timeout
            .clamp(Duration::from_millis(100), Duration::from_secs(600)),
        finish_timeout: hello
            .finish_timeout
            .clamp(Duration::from_millis(100), Duration::from_secs(86_400)),
        max_frame: opts.max_frame,
        auth,
        forged: Arc::default(),
    });
    Ok((ctx, me, hello.chain[1..].to_vec()))
}

/// One transfer through this node: its sink, which chunks it holds and
/// which it has received.
struct Transfer {
    ctx: Arc<Ctx>,
    me: SocketAddr,
    start: Instant,
    manifest: Arc<Manifest>,
    sink: Arc<dyn ChunkSink>,
    /// Chunks the sink held before the transfer.
    own_have: Arc<HashSet<ChunkId>>,
    /// The others: the store stage must get every one of them.
    needed_by_me: HashSet<ChunkId>,
    /// Those of `needed_by_me` handed to the store stage.
    stored: HashSet<ChunkId>,
    bytes_received: u64,
}

/// The store and forward stages, and the channels feeding them.
struct Stages {
    wtx: mpsc::Sender<(ChunkId, Bytes)>,
    store: JoinHandle<std::result::Result<(), String>>,
    ftx: mpsc::Sender<Input>,
    fwd: AbortOnDrop<Option<(Vec<NodeReport>, u64)>>,
}

impl Stages {
    /// After a broken upstream: closing the forward channel without END
    /// makes the nodes below abort as well: none of them may complete from
    /// a broken upstream.
    fn abort(self) {
        drop(self.ftx);
        drop(self.wtx);
        drop(self.fwd);
    }
}

impl Transfer {
    /// Opens the sink and looks at the local store while the rest of the
    /// chain (`chain`) links up. Also returns, per manifest entry, whether
    /// the sink holds it.
    async fn open(
        ctx: Arc<Ctx>,
        me: SocketAddr,
        start: Instant,
        factory: Arc<dyn SinkFactory>,
        chain: Vec<SocketAddr>,
    ) -> Result<(Transfer, Downstream, Vec<bool>)> {
        let manifest = Arc::clone(&ctx.info.manifest);
        let sink = {
            let info = ctx.info.clone();
            blocking(move || factory.open(&info)).await?
        };
        let ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
        // Look at the local store while the rest of the chain links up.
        let has = {
            let (sink, ids) = (Arc::clone(&sink), ids.clone());
            blocking(move || sink.has(&ids))
        };
        let link = Downstream::connect(Arc::clone(&ctx), chain, None);
        let (own_have_v, ds) = tokio::join!(has, link);
        let own_have_v = own_have_v?;
        if own_have_v.len() != ids.len() {
            return Err(Error::Storage(format!(
                "sink answered `has` for {} of {} chunks",
                own_have_v.len(),
                ids.len()
            )));
        }
        let own_have: Arc<HashSet<ChunkId>> = Arc::new(
            ids.iter()
                .zip(&own_have_v)
                .filter(|(_, h)| **h)
                .map(|(id, _)| *id)
                .collect(),
        );
        let needed_by_me: HashSet<ChunkId> = ids
            .iter()
            .filter(|id| !own_have.contains(id))
            .copied()
            .collect();
        let t = Transfer {
            ctx,
            me,
            start,
            manifest,
            sink,
            own_have,
            stored: HashSet::with_capacity(needed_by_me.len()),
            needed_by_me,
            bytes_received: 0,
        };
        Ok((t, ds, own_have_v))
    }

    /// Tells the upstream which chunks this node and everything below it
    /// hold (HAVE); the downstream is to expect the others.
    async fn announce_have(
        &self,
        ds: &mut Downstream,
        own_have_v: &[bool],
        up: &Upstream,
    ) -> Result<()> {
        let my_have: Vec<bool> = match ds.have() {
            Some(down) => own_have_v.iter().zip(down).map(|(a, b)| *a && *b).collect(),
            None => own_have_v.to_vec(),
        };
        let expected: HashSet<ChunkId> = self
            .manifest
            .chunks
            .iter()
            .zip(&my_have)
            .filter(|(_, h)| !**h)
            .map(|(c, _)| c.id)
            .collect();
        ds.set_expected(expected);
        send_control(up, &self.ctx, self.me, Frame::Have(my_have)).await?;
        Ok(())
    }

    /// Starts the store stage (a blocking thread) and the forward stage
    /// towards `ds`, which resupplies bypassed chunks from the sink.
    fn start_stages(&self, ds: Downstream, opts: &ServeOptions) -> Stages {
        let avail = Arc::new(Avail::default());
        let (wtx, wrx) =
            mpsc::channel::<(ChunkId, Bytes)>(queue_len(opts.queue_bytes, &self.manifest));
        let store = {
            let (sink, avail) = (Arc::clone(&self.sink), Arc::clone(&avail));
            tokio::task::spawn_blocking(move || store_stage(sink, wrx, avail))
        };
        let resupply = self.resupply(avail);
        let (ftx, frx) = mpsc::channel::<Input>(queue_len(opts.queue_bytes, &self.manifest));
        let fwd = AbortOnDrop(tokio::spawn(pump(ds, frx, resupply)));
        Stages {
            wtx,
            store,
            ftx,
            fwd,
        }
    }

    /// Reads a chunk back from the sink for resending: one it held from the
    /// start, or one the store stage has written (waited for, bounded).
    fn resupply(&self, avail: Arc<Avail>) -> Resupply {
        let (sink, own_have) = (Arc::clone(&self.sink), Arc::clone(&self.own_have));
        let limit = self.ctx.io_timeout;
        Arc::new(move |id: ChunkId| {
            let (sink, avail, own_have) =
                (Arc::clone(&sink), Arc::clone(&avail), Arc::clone(&own_have));
            Box::pin(async move {
                if !own_have.contains(&id) {
                    avail.wait(id, limit).await?;
                }
                let data = blocking(move || sink.get(&id)).await?;
                // What we read back must still be what we verified.
                if ChunkId::of(&data) != id {
                    return Err(Error::Storage(format!(
                        "local copy of chunk {id} is corrupt"
                    )));
                }
                Ok(data)
            })
        })
    }

    /// Reads DATA frames until END, verifies each and hands it to the
    /// store stage (if this node lacks it) and to the forward stage.
    async fn relay_chunks(
        &mut self,
        up_r: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
        up: &Upstream,
        stages: &Stages,
    ) -> Result<()> {
        let lens = self.manifest.lengths();
        loop {
            match up_r
                .read_timeout(self.ctx.io_timeout, "DATA or END")
                .await?
            {
                Frame::Data { id, data } => {
                    verify_chunk(&lens, &id, &data)?;
                    self.bytes_received += data.len() as u64;
                    if self.needed_by_me.contains(&id) && self.stored.insert(id) {
                        // The store stage drains until the channel closes.
                        up.store_wait_begins();
                        let _ = stages.wtx.send((id, data.clone())).await;
                        up.store_wait_ends();
                    }
                    let _ = stages.ftx.send(Input::Chunk(id, data)).await;
                }
                Frame::Keepalive => {}
                Frame::End => return Ok(()),
                f => {
                    return Err(Error::Unexpected {
                        expected: "DATA or END",
                        got: f.kind_name(),
                    })
                }
            }
        }
    }

    /// Tells the sink to drop what it has of this transfer.
    async fn abort_sink(&self) {
        let sink = Arc::clone(&self.sink);
        let _ = blocking(move || {
            sink.abort();
            Ok(())
        })
        .await;
    }

    /// After END: waits for this node's own result and the downstream's
    /// reports, and returns them all, this node's first.
    async fn finish(
        &self,
        store: JoinHandle<std::result::Result<(), String>>,
        fwd: AbortOnDrop<Option<(Vec<NodeReport>, u64)>>,
    ) -> Vec<NodeReport> {
        let down = async {
            let mut fwd = fwd;
            match (&mut fwd.0).await {
                Ok(Some((reports, _))) => reports,
                Ok(None) => Vec::new(),
                Err(e) => {
                    warn!(error = %e, "forward stage failed");
                    Vec::new()
                }
            }
        };
        let (own, down) = tokio::join!(self.finish_own(store), down);
        let (me, elapsed) = (self.me, self.start.elapsed());
        let mine = match own {
            Ok(written) => NodeReport {
                addr: me,
                ok: true,
                reason: None,
                bytes_received: self.bytes_received,
                bytes_written: written,
                elapsed,
            },
            Err(why) => NodeReport {
                addr: me,
                ok: false,
                reason: Some(why),
                bytes_received: self.bytes_received,
                bytes_written: 0,
                elapsed,
            },
        };
        info!(transfer = self.ctx.info.transfer_id, %me, ok = mine.ok, reason = mine.reason.as_deref().unwrap_or(""), "transfer done");
        let mut reports = Vec::with_capacity(down.len() + 1);
        reports.push(mine);
        reports.extend(down);
        reports
    }

    /// This node's own work after END: the store stage drained, then the
    /// sink finished. Returns the bytes written, or why it failed (the
    /// sink then aborted).
    async fn finish_own(
        &self,
        store: JoinHandle<std::result::Result<(), String>>,
    ) -> std::result::Result<u64, String> {
        // This node's own work after END is bounded, whatever its store does,
        // so the chain above always gets a REPORT (see Downstream::finish).
        let finish_limit = self.ctx.finish_timeout;
        let finishing = async {
            let stored_ok = match store.await {
                Ok(r) => r,
                Err(e) => Err(format!("store stage failed: {e}")),
            };
            let missing = self.needed_by_me.len() - self.stored.len();
            match stored_ok {
                Err(e) => Err(e),
                Ok(()) if missing > 0 => {
                    Err(format!("upstream ended with {missing} chunks missing"))
                }
                Ok(()) => {
                    let (sink, m) = (Arc::clone(&self.sink), Arc::clone(&self.manifest));
                    blocking(move || sink.finish(&m))
                        .await
                        .map_err(|e| e.to_string())
                }
            }
        };
        let res = match tokio::time::timeout(finish_limit, finishing).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "store did not finish within {:.1}s",
                finish_limit.as_secs_f64()
            )),
        };
        if res.is_err() {
            self.abort_sink().await;
        }
        res
    }
}
