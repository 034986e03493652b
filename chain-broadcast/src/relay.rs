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

use crate::codec::{FrameReader, FrameWriter};
use crate::error::{BoxError, Error, Result};
use crate::forward::{pump, AbortOnDrop, Ctx, Downstream, Input, Resupply};
use crate::frame::{Frame, HEADER_LEN};
use crate::manifest::{ChunkId, TransferInfo};
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
    let (r, w) = sock.into_split();
    let mut up_r = FrameReader::new(r, opts.max_frame);
    let up = Arc::new(Upstream {
        w: tokio::sync::Mutex::new(FrameWriter::new(w, opts.hello_timeout)),
        base: Instant::now(),
        store_wait: AtomicU64::new(0),
    });
    if let Err(e) = run(&mut up_r, &up, factory, &opts).await {
        warn!(%peer, error = %e, "chain transfer failed");
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
    factory: Arc<dyn SinkFactory>,
    opts: &ServeOptions,
) -> Result<()> {
    let start = Instant::now();
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
    let ctx = Arc::new(Ctx {
        info: TransferInfo {
            transfer_id: hello.transfer_id,
            name: hello.name.clone(),
            manifest: Arc::clone(&hello.manifest),
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
    });
    up.w.lock().await.set_timeout(ctx.io_timeout);
    let ticker = AbortOnDrop(tokio::spawn(keepalive_ticker(
        Arc::clone(up),
        ctx.keepalive_every(),
        ctx.io_timeout,
    )));
    let manifest = Arc::clone(&ctx.info.manifest);
    info!(transfer = ctx.info.transfer_id, name = %ctx.info.name, %me,
          chunks = manifest.len(), downstream = hello.chain.len() - 1, "transfer started");

    let prep = async {
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
        let link = Downstream::connect(Arc::clone(&ctx), hello.chain[1..].to_vec(), None);
        let (own_have_v, ds) = tokio::join!(has, link);
        let own_have_v = own_have_v?;
        if own_have_v.len() != ids.len() {
            return Err(Error::Storage(format!(
                "sink answered `has` for {} of {} chunks",
                own_have_v.len(),
                ids.len()
            )));
        }
        Ok((sink, ids, own_have_v, ds))
    };
    let (sink, ids, own_have_v, mut ds) = prep.await?;
    let own_have: Arc<HashSet<ChunkId>> = Arc::new(
        ids.iter()
            .zip(&own_have_v)
            .filter(|(_, h)| **h)
            .map(|(id, _)| *id)
            .collect(),
    );
    let my_have: Vec<bool> = match ds.have() {
        Some(down) => own_have_v.iter().zip(down).map(|(a, b)| *a && *b).collect(),
        None => own_have_v.clone(),
    };
    let expected: HashSet<ChunkId> = ids
        .iter()
        .zip(&my_have)
        .filter(|(_, h)| !**h)
        .map(|(id, _)| *id)
        .collect();
    ds.set_expected(expected);
    up.w.lock().await.send_now(&Frame::Have(my_have)).await?;

    let avail = Arc::new(Avail::default());
    let (wtx, wrx) = mpsc::channel::<(ChunkId, Bytes)>(queue_len(opts.queue_bytes, &manifest));
    let store = {
        let (sink, avail) = (Arc::clone(&sink), Arc::clone(&avail));
        tokio::task::spawn_blocking(move || store_stage(sink, wrx, avail))
    };
    let resupply: Resupply = {
        let (sink, avail, own_have) =
            (Arc::clone(&sink), Arc::clone(&avail), Arc::clone(&own_have));
        let limit = ctx.io_timeout;
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
    };
    let (ftx, frx) = mpsc::channel::<Input>(queue_len(opts.queue_bytes, &manifest));
    let fwd = AbortOnDrop(tokio::spawn(pump(ds, frx, resupply)));

    let lens = manifest.lengths();
    let needed_by_me: HashSet<ChunkId> = ids
        .iter()
        .filter(|id| !own_have.contains(id))
        .copied()
        .collect();
    let mut stored: HashSet<ChunkId> = HashSet::with_capacity(needed_by_me.len());
    let mut bytes_received = 0u64;
    let read: Result<()> = loop {
        let f = match up_r.read_timeout(ctx.io_timeout, "DATA or END").await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        match f {
            Frame::Data { id, data } => {
                if let Err(e) = verify_chunk(&lens, &id, &data) {
                    break Err(e);
                }
                bytes_received += data.len() as u64;
                if needed_by_me.contains(&id) && stored.insert(id) {
                    // The store stage drains until the channel closes.
                    up.store_wait_begins();
                    let _ = wtx.send((id, data.clone())).await;
                    up.store_wait_ends();
                }
                let _ = ftx.send(Input::Chunk(id, data)).await;
            }
            Frame::Keepalive => {}
            Frame::End => break Ok(()),
            f => {
                break Err(Error::Unexpected {
                    expected: "DATA or END",
                    got: f.kind_name(),
                })
            }
        }
    };
    if let Err(e) = read {
        // Closing the forward channel without END makes the nodes below
        // abort as well: none of them may complete from a broken upstream.
        drop(ftx);
        drop(wtx);
        drop(fwd);
        let _ = blocking(move || {
            sink.abort();
            Ok(())
        })
        .await;
        return Err(e);
    }
    let _ = ftx.send(Input::End).await;
    drop(wtx);

    // This node's own work after END is bounded, whatever its store does,
    // so the chain above always gets a REPORT (see Downstream::finish).
    let finish_limit = ctx.finish_timeout;
    let own = async {
        let finishing = async {
            let stored_ok = match store.await {
                Ok(r) => r,
                Err(e) => Err(format!("store stage failed: {e}")),
            };
            let missing = needed_by_me.len() - stored.len();
            let res: std::result::Result<u64, String> = match stored_ok {
                Err(e) => Err(e),
                Ok(()) if missing > 0 => {
                    Err(format!("upstream ended with {missing} chunks missing"))
                }
                Ok(()) => {
                    let (sink, m) = (Arc::clone(&sink), Arc::clone(&manifest));
                    blocking(move || sink.finish(&m))
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            res
        };
        let res = match tokio::time::timeout(finish_limit, finishing).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "store did not finish within {:.1}s",
                finish_limit.as_secs_f64()
            )),
        };
        if res.is_err() {
            let sink = Arc::clone(&sink);
            let _ = blocking(move || {
                sink.abort();
                Ok(())
            })
            .await;
        }
        res
    };
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
    let (own, down) = tokio::join!(own, down);
    let mine = match own {
        Ok(written) => NodeReport {
            addr: me,
            ok: true,
            reason: None,
            bytes_received,
            bytes_written: written,
            elapsed: start.elapsed(),
        },
        Err(why) => NodeReport {
            addr: me,
            ok: false,
            reason: Some(why),
            bytes_received,
            bytes_written: 0,
            elapsed: start.elapsed(),
        },
    };
    info!(transfer = ctx.info.transfer_id, %me, ok = mine.ok, reason = mine.reason.as_deref().unwrap_or(""), "transfer done");
    let mut reports = Vec::with_capacity(down.len() + 1);
    reports.push(mine);
    reports.extend(down);
    drop(ticker);
    up.w.lock().await.send_now(&Frame::Report(reports)).await?;
    Ok(())
}
