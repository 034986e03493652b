//! The receiving agent: WAN frames in, QEMU's migration stream out (stdout
//! of `-incoming exec:`), byte for byte what the source QEMU wrote.
//!
//! A page sent by id is looked up, in this order, in the pages this
//! receiver got in full (bounded memory), in the destination site's store
//! (chunk API, many requests in flight), again in the site for a short
//! bounded time (another agent of the group may still be sending it), and
//! finally pulled from the sender over the same connection. Every page
//! taken by id is checked against its BLAKE3 id. Content nobody can
//! produce stops the migration: a page is never guessed or zero-filled.
//!
//! Pages received in full are stored at the site in the background, so the
//! other agents' references resolve and later migrations find them.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::migrate::link::{WanReader, WanStream, WanWriter};
use bytes::Bytes;
use parking_lot::Mutex;
use rayon::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use super::report::{KeptPages, ReceiverReport};
use super::wire::{self, Frame, Op, PROTOCOL};
use crate::migrate::codec::rcache::{CodecConfig, CodecError, PageDecoder};
use crate::migrate::error::{AgentError, Result};
use crate::qemu::stream::PAGE_SIZE;
use crate::store::{ChunkId, ManifestEntry};
use chunk_api::ChunkClient;

mod resolve;
use crate::migrate::report::unix_ms;
use resolve::resolve;

#[derive(Clone)]
pub struct ReceiverOptions {
    pub site: Option<ChunkClient>,
    /// How long a page missing at the site is waited for before pulling it.
    pub wait: Duration,
    /// Store the pages received in full at the site.
    pub store_pages: bool,
    /// Site requests in flight.
    pub concurrency: usize,
    /// Bytes of pages received in full kept in memory.
    pub cache_bytes: usize,
    pub pull_timeout: Duration,
    /// How long to wait for the sender's first frame.
    pub hello_timeout: Duration,
    /// Commit the pages this receiver stored at the site as this object
    /// (BUCKET, KEY) once the stream is verified: referenced pages outlive
    /// the GC grace period, so later migrations and clones find them.
    pub keep: Option<(String, String)>,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            site: None,
            wait: Duration::from_secs(2),
            store_pages: true,
            concurrency: 32,
            cache_bytes: 1 << 30,
            pull_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(60),
            keep: None,
        }
    }
}

#[derive(Default)]
struct Counters {
    wan: AtomicU64,
    raw: AtomicU64,
    local: AtomicU64,
    site: AtomicU64,
    pulled: AtomicU64,
    waited: AtomicU64,
    stored: AtomicU64,
    store_errors: AtomicU64,
}

/// Pages received in full, FIFO-bounded.
type LocalPages = super::pages::BoundedPages;

type Waiters = HashMap<ChunkId, Vec<oneshot::Sender<Option<Bytes>>>>;

/// Largest codec state a sender may ask this receiver to keep (each of
/// block cache and page history), so a bad peer cannot exhaust memory.
const MAX_CODEC_BYTES: usize = 8 << 30;

/// The decoder for a sender's codec settings, or why they are refused.
fn codec_for(codec: Option<CodecConfig>, generation: u32) -> Result<Option<PageDecoder>> {
    let Some(c) = codec else {
        return Ok(None);
    };
    if c.page_size != PAGE_SIZE {
        return Err(AgentError::Peer(format!(
            "codec page size {} (this receiver handles {PAGE_SIZE})",
            c.page_size
        )));
    }
    if (c.cbr && c.cache_bytes > MAX_CODEC_BYTES)
        || (c.delta && c.delta_history_bytes > MAX_CODEC_BYTES)
    {
        return Err(AgentError::Peer(format!(
            "codec state of more than {} GiB requested",
            MAX_CODEC_BYTES >> 30
        )));
    }
    Ok(Some(PageDecoder::new_keyed(c, generation)?))
}

/// What every batch's resolution shares.
struct Shared {
    /// Page codec state, mirrored from the sender's (`None`: codec off).
    /// Only `prepare` touches it, one batch at a time in stream order.
    decoder: Mutex<Option<PageDecoder>>,
    opts: ReceiverOptions,
    local: Mutex<LocalPages>,
    pulls: Mutex<Waiters>,
    wr: tokio::sync::Mutex<WanWriter>,
    site_slots: Semaphore,
    counters: Counters,
    /// Batch bytes read from the WAN but not yet taken by the rebuilder.
    queued: AtomicU64,
    /// Signalled when `queued` shrinks or a pull starts.
    room: Notify,
}

/// Batch bytes the frame reader may hold ahead of the rebuilder. Beyond it
/// the reader pauses, unless a pull is outstanding: a pulled page arrives
/// behind the batches already sent, so they must be read to reach it.
const READ_AHEAD: u64 = 256 << 20;

enum Incoming {
    Batch {
        ops: Vec<Op>,
        raw_len: u32,
        compressed: bool,
        blob: Bytes,
    },
    End {
        stream_len: u64,
        digest: u128,
    },
}

/// Run the receiver on an accepted WAN connection, writing to `out`.
pub async fn receive<W: Write + Send + 'static>(
    conn: WanStream,
    out: W,
    opts: ReceiverOptions,
) -> Result<ReceiverReport> {
    let started = Instant::now();
    conn.set_nodelay(true).ok();
    let (mut rd, wr) = conn.split();
    let hello = tokio::time::timeout(opts.hello_timeout, wire::read_frame(&mut rd))
        .await
        .map_err(|_| AgentError::Timeout("no hello from the sender".into()))??;
    let accepted = match hello {
        Some(Frame::Hello {
            protocol,
            vm,
            group,
            generation,
            codec,
        }) if protocol == PROTOCOL => codec_for(codec, generation).map(|d| (vm, group, d)),
        Some(Frame::Hello { protocol, .. }) => Err(AgentError::Peer(format!(
            "sender speaks migration protocol {protocol}, this receiver {PROTOCOL}: run the same strato version at both ends"
        ))),
        other => Err(AgentError::Peer(format!("expected a hello, got {other:?}"))),
    };
    // Answer the hello either way, so the sender reports why.
    let (ok, message) = match &accepted {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    };
    let mut wr = wr;
    wire::write_frame(&mut wr, &Frame::Ack { ok, message }).await?;
    wr.flush()
        .await
        .map_err(|e| AgentError::io("answering the sender", e))?;
    let (vm, group, decoder) = accepted?;
    let shared = Arc::new(Shared {
        decoder: Mutex::new(decoder),
        local: Mutex::new(LocalPages::new((opts.cache_bytes / PAGE_SIZE).max(1))),
        pulls: Mutex::new(HashMap::new()),
        wr: tokio::sync::Mutex::new(wr),
        site_slots: Semaphore::new(opts.concurrency.max(1)),
        counters: Counters::default(),
        queued: AtomicU64::new(0),
        room: Notify::new(),
        opts,
    });

    let (in_tx, mut in_rx) = mpsc::unbounded_channel::<Result<Incoming>>();
    let reader = tokio::spawn(read_frames(rd, shared.clone(), in_tx));

    // Pages to store at the site, in the background.
    let (store_tx, store_rx) = mpsc::channel::<(ChunkId, Bytes)>(8192);
    let storer = tokio::spawn(store_pages(shared.clone(), store_rx));

    // Stream bytes go to a thread that owns the blocking output.
    let (out_tx, out_rx) = mpsc::channel::<Vec<Bytes>>(16);
    let writer = std::thread::Builder::new()
        .name("migrate-write".into())
        .spawn(move || write_output(out, out_rx))
        .map_err(|e| AgentError::io("starting the writer", e))?;

    let result = run(&shared, &mut in_rx, &store_tx, out_tx, writer).await;
    reader.abort();
    let (ok, message) = match &result {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    };
    {
        let mut w = shared.wr.lock().await;
        let _ = wire::write_frame(&mut *w, &Frame::Ack { ok, message }).await;
        let _ = w.flush().await;
    }
    let (stream_bytes, last_output_unix_ms) = result?;
    // Let the background stores finish (bounded) so the site holds the
    // pages for the group and for later migrations.
    drop(store_tx);
    let stored_ids = match tokio::time::timeout(Duration::from_secs(60), storer).await {
        Ok(Ok(ids)) => ids,
        Ok(Err(e)) => {
            tracing::warn!("storing received pages at the site: {e}");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("storing received pages at the site timed out");
            Vec::new()
        }
    };
    let kept = match (&shared.opts.keep, &shared.opts.site) {
        (Some((bucket, key)), Some(site)) => Some(keep_pages(site, bucket, key, stored_ids).await),
        _ => None,
    };
    let c = &shared.counters;
    Ok(ReceiverReport {
        vm,
        group,
        stream_bytes,
        wan_bytes: c.wan.load(Ordering::Relaxed),
        pages_raw: c.raw.load(Ordering::Relaxed),
        pages_local: c.local.load(Ordering::Relaxed),
        pages_site: c.site.load(Ordering::Relaxed),
        pages_pulled: c.pulled.load(Ordering::Relaxed),
        pages_waited: c.waited.load(Ordering::Relaxed),
        last_output_unix_ms,
        pages_stored: c.stored.load(Ordering::Relaxed),
        store_errors: c.store_errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        verified: true,
        kept,
    })
}

/// Commit the distinct pages stored at the site as one object. The
/// migration has succeeded by now, so a failure here is reported, not
/// fatal: the pages are at the site either way, only unreferenced.
async fn keep_pages(
    site: &ChunkClient,
    bucket: &str,
    key: &str,
    mut ids: Vec<ChunkId>,
) -> KeptPages {
    ids.sort_unstable();
    ids.dedup();
    let entries: Vec<ManifestEntry> = ids
        .iter()
        .map(|id| ManifestEntry {
            id: *id,
            len: PAGE_SIZE as u32,
        })
        .collect();
    let error = site
        .commit_manifest(bucket, key, &entries)
        .await
        .err()
        .map(|e| e.to_string());
    if let Some(e) = &error {
        tracing::warn!("keeping {} pages as {bucket}/{key}: {e}", ids.len());
    }
    KeptPages {
        bucket: bucket.to_string(),
        key: key.to_string(),
        pages: if error.is_none() { ids.len() as u64 } else { 0 },
        error,
    }
}

enum Event {
    Resolved(std::result::Result<Result<Vec<Bytes>>, tokio::task::JoinError>),
    Frame(Option<Result<Incoming>>),
}

/// Rebuild batches in order until the sender's end; returns the stream
/// length and when its last byte went out.
async fn run(
    shared: &Arc<Shared>,
    in_rx: &mut mpsc::UnboundedReceiver<Result<Incoming>>,
    store_tx: &mpsc::Sender<(ChunkId, Bytes)>,
    out_tx: mpsc::Sender<Vec<Bytes>>,
    writer: std::thread::JoinHandle<Result<(u64, u128, f64)>>,
) -> Result<(u64, f64)> {
    // Resolution of by-id pages runs ahead in tasks; output stays in order.
    let mut pending: VecDeque<tokio::task::JoinHandle<Result<Vec<Bytes>>>> = VecDeque::new();
    let end = loop {
        // Wait for the next frame or the oldest resolution, whichever comes
        // first: a failed page must stop us even while the WAN is quiet.
        let room = pending.len() < 8;
        let event = match pending.front_mut() {
            Some(front) if !room => Event::Resolved(front.await),
            Some(front) => tokio::select! {
                biased;
                r = front => Event::Resolved(r),
                m = in_rx.recv() => Event::Frame(m),
            },
            None => Event::Frame(in_rx.recv().await),
        };
        let msg = match event {
            Event::Resolved(r) => {
                pending.pop_front();
                let pieces =
                    r.map_err(|e| AgentError::Internal(format!("resolve task: {e}")))??;
                out_tx
                    .send(pieces)
                    .await
                    .map_err(|_| AgentError::Internal("output closed".into()))?;
                continue;
            }
            Event::Frame(m) => {
                m.ok_or_else(|| AgentError::Peer("connection closed mid-stream".into()))??
            }
        };
        match msg {
            Incoming::Batch {
                ops,
                raw_len,
                compressed,
                blob,
            } => {
                shared
                    .queued
                    .fetch_sub(blob.len() as u64, Ordering::Relaxed);
                shared.room.notify_one();
                // Sequential on purpose: a later batch may name a page this
                // one carries, so its raw pages must be known first.
                let sh = shared.clone();
                let (pieces, raws) = tokio::task::spawn_blocking(move || {
                    prepare(&sh, &ops, &wire::open_blob(&blob, raw_len, compressed)?)
                })
                .await
                .map_err(|e| AgentError::Internal(format!("prepare task: {e}")))??;
                if shared.opts.store_pages && shared.opts.site.is_some() {
                    for r in raws {
                        if store_tx.send(r).await.is_err() {
                            break;
                        }
                    }
                }
                pending.push_back(tokio::spawn(resolve(shared.clone(), pieces)));
            }
            Incoming::End { stream_len, digest } => break (stream_len, digest),
        }
    };
    while let Some(h) = pending.pop_front() {
        flush_one(h, &out_tx).await?;
    }
    drop(out_tx);
    let (len, digest, last_ms) = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| AgentError::Internal(format!("writer: {e}")))?
        .map_err(|_| AgentError::Internal("writer panicked".into()))??;
    if (len, digest) != end {
        return Err(AgentError::Mismatch(format!(
            "{len} bytes written, sender sent {}; digests {}",
            end.0,
            if digest == end.1 { "match" } else { "differ" }
        )));
    }
    Ok((len, last_ms))
}

async fn flush_one(
    h: tokio::task::JoinHandle<Result<Vec<Bytes>>>,
    out_tx: &mpsc::Sender<Vec<Bytes>>,
) -> Result<()> {
    let pieces = h
        .await
        .map_err(|e| AgentError::Internal(format!("resolve task: {e}")))??;
    out_tx
        .send(pieces)
        .await
        .map_err(|_| AgentError::Internal("output closed".into()))
}

/// A piece of the output: bytes, or a page still to find.
enum Slot {
    Ready(Bytes),
    Wanted(ChunkId),
}

type Prepared = (Vec<Slot>, Vec<(ChunkId, Bytes)>);

/// Cut a batch's blob along its operations; index its raw pages.
fn prepare(shared: &Shared, ops: &[Op], blob: &Bytes) -> Result<Prepared> {
    let mut slots = Vec::with_capacity(ops.len());
    let mut at = 0usize;
    let mut raws = Vec::new();
    let take = |at: &mut usize, n: usize| -> Result<Bytes> {
        if *at + n > blob.len() {
            return Err(wire::WireError::Malformed("batch blob too short".into()).into());
        }
        let b = blob.slice(*at..*at + n);
        *at += n;
        Ok(b)
    };
    for op in ops {
        match op {
            Op::Literal(n) => slots.push(Slot::Ready(take(&mut at, *n as usize)?)),
            Op::Raw => {
                let p = take(&mut at, PAGE_SIZE)?;
                raws.push(p.clone());
                slots.push(Slot::Ready(p));
            }
            Op::Hash(id) => slots.push(Slot::Wanted(*id)),
            Op::Coded { key, len } => {
                let frame = take(&mut at, *len as usize)?;
                let mut dec = shared.decoder.lock();
                // A coded page without codec state (codec off in the
                // hello) is refused like any frame naming unknown state.
                let dec = dec.as_mut().ok_or(CodecError::Disabled("the page codec"))?;
                let p = Bytes::copy_from_slice(dec.decode_keyed(*key, &frame)?);
                raws.push(p.clone());
                slots.push(Slot::Ready(p));
            }
        }
    }
    if at != blob.len() {
        return Err(wire::WireError::Malformed("batch blob has extra bytes".into()).into());
    }
    let ids: Vec<ChunkId> = raws.par_iter().map(|p| ChunkId::of(p)).collect();
    let raws: Vec<(ChunkId, Bytes)> = ids.into_iter().zip(raws).collect();
    {
        let mut local = shared.local.lock();
        for (id, p) in &raws {
            local.insert(*id, p.clone());
        }
    }
    shared
        .counters
        .raw
        .fetch_add(raws.len() as u64, Ordering::Relaxed);
    Ok((slots, raws))
}

/// Read the sender's frames: batches and the end go on in order, pulled
/// pages go straight to whoever waits for them.
async fn read_frames(
    mut rd: WanReader,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Result<Incoming>>,
) {
    loop {
        while shared.queued.load(Ordering::Relaxed) > READ_AHEAD && shared.pulls.lock().is_empty() {
            shared.room.notified().await;
        }
        let frame = match wire::read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                let _ = tx.send(Err(AgentError::Peer("connection closed mid-stream".into())));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into()));
                return;
            }
        };
        let size = frame_size(&frame);
        shared.counters.wan.fetch_add(size, Ordering::Relaxed);
        let item = match frame {
            Frame::Batch {
                ops,
                raw_len,
                compressed,
                blob,
            } => Incoming::Batch {
                ops,
                raw_len,
                compressed,
                blob,
            },
            Frame::End { stream_len, digest } => Incoming::End { stream_len, digest },
            Frame::Pulled(pages) => {
                let mut p = shared.pulls.lock();
                for (id, data) in pages {
                    for w in p.remove(&id).unwrap_or_default() {
                        let _ = w.send(data.clone());
                    }
                }
                continue;
            }
            other => {
                let _ = tx.send(Err(AgentError::Peer(format!("unexpected frame {other:?}"))));
                return;
            }
        };
        if let Incoming::Batch { blob, .. } = &item {
            shared
                .queued
                .fetch_add(blob.len() as u64, Ordering::Relaxed);
        }
        let end = matches!(item, Incoming::End { .. });
        if tx.send(Ok(item)).is_err() {
            return;
        }
        if end {
            // Keep serving pulled pages until the batches are resolved.
            continue;
        }
    }
}

fn frame_size(f: &Frame) -> u64 {
    match f {
        Frame::Batch { ops, blob, .. } => {
            14 + blob.len() as u64
                + ops
                    .iter()
                    .map(|o| match o {
                        Op::Literal(_) => 5,
                        Op::Raw => 1,
                        Op::Hash(_) => 33,
                        Op::Coded { .. } => 13,
                    })
                    .sum::<u64>()
        }
        Frame::Pulled(p) => {
            5 + p
                .iter()
                .map(|(_, d)| 33 + d.as_ref().map_or(0, |d| d.len() as u64))
                .sum::<u64>()
        }
        _ => 5,
    }
}

async fn store_pages(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(ChunkId, Bytes)>,
) -> Vec<ChunkId> {
    let mut stored = Vec::new();
    let Some(site) = shared.opts.site.clone() else {
        return stored;
    };
    // Batches of what has arrived so far: one request (and one sync per
    // segment at the site) for many pages.
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 2048 {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match site.put_many(&batch).await {
            Ok(_) => {
                shared.counters.stored.fetch_add(n, Ordering::Relaxed);
                stored.extend(batch.iter().map(|(id, _)| *id));
            }
            Err(e) => {
                tracing::warn!("storing {n} pages at the site: {e}");
                shared.counters.store_errors.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
    stored
}

/// Write the rebuilt stream (blocking); returns its length, digest and
/// when its last byte went out (wall-clock ms).
fn write_output<W: Write>(out: W, mut rx: mpsc::Receiver<Vec<Bytes>>) -> Result<(u64, u128, f64)> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    let mut len = 0u64;
    while let Some(pieces) = rx.blocking_recv() {
        for p in pieces {
            digest.update(&p);
            len += p.len() as u64;
            out.write_all(&p)
                .map_err(|e| AgentError::io("writing the stream to QEMU", e))?;
        }
        // Don't hold bytes back while the WAN is quiet.
        if rx.is_empty() {
            out.flush()
                .map_err(|e| AgentError::io("writing the stream to QEMU", e))?;
        }
    }
    out.flush()
        .map_err(|e| AgentError::io("writing the stream to QEMU", e))?;
    Ok((len, digest.digest128(), unix_ms()))
}
