//! The sending agent: QEMU's migration stream in (stdin of `exec:`), WAN
//! frames out.
//!
//! Pipeline, every stage bounded so QEMU feels the WAN's pace:
//! reader thread (stdin) -> tokenizer thread (pages, ids, whole-stream
//! digest) -> site queries (`have`, then `claim` for the group; a window
//! of batches in flight, claims issued in stream order) -> decisions (in
//! order) -> page codec (blocking pool, one batch at a time in stream
//! order) -> encoding and zstd (blocking pool) -> the WAN connection.
//! A second task answers the receiver's pulls from a bounded page cache.
//!
//! The page codec (`rcache`: CloudNet's sub-page redundancy cache and page
//! deltas) sits behind the store-assisted dedup: only pages that would
//! cross in full reach it. Each such page goes as a delta against the last
//! version of the same guest page this connection sent (QEMU resends dirty
//! pages in later rounds), else as cache references for the blocks seen
//! before, else literally; zstd then compresses the batch blob as before.
//! Pages sent by id (site, group, repeat) and zero pages leave the codec
//! state untouched at both ends: the receiver resolves by-id pages
//! asynchronously, after later batches were decoded, so feeding them in
//! would need a stall; a later delta for such a page is simply taken
//! against the older version both ends still hold.
//! The codec state lives for one connection (a fresh generation in the
//! `Hello`): a retried migration starts empty at both ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rayon::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::readahead::{CloseOnDrop, ReadAhead};
use super::report::VmReport;
use super::wire::{self, Frame, Op, PROTOCOL};
use crate::migrate::codec::rcache::{CodecConfig, FrameKind, PageEncoder};
use crate::migrate::error::{AgentError, Result};
use crate::migrate::proto;
use crate::qemu::stream::{StreamStats, Token, Tokenizer, PAGE_SIZE};
use crate::store::ChunkId;
use chunk_api::ChunkClient;

/// How a sender behaves.
#[derive(Clone)]
pub struct SenderOptions {
    pub vm: String,
    /// Migration group shared with the other agents of a cluster migration.
    pub group: Option<String>,
    /// The destination site's chunk API (indexing + coordination service).
    pub site: Option<ChunkClient>,
    /// Replace known pages by their ids (off: plain or zstd-only sending).
    pub dedup: bool,
    /// zstd level for the batches' blobs; `None` sends them as they are.
    pub zstd_level: Option<i32>,
    /// Pages per batch (one site query and one blob each).
    pub batch_pages: usize,
    /// Batches whose site queries may be in flight at once.
    pub window: usize,
    /// Bytes of pages sent by id kept to answer pulls.
    pub keep_bytes: usize,
    /// How long to wait for the receiver's final acknowledgement.
    pub ack_timeout: Duration,
    /// Redundancy cache and page deltas for pages sent in full (`None`:
    /// both off). Its zstd level is ignored: batches are compressed whole.
    pub codec: Option<CodecConfig>,
    /// Stream read ahead of the WAN, as drain time (see `readahead`);
    /// `None`: only the pipeline's queues bound it.
    pub read_ahead: Option<Duration>,
}

/// The agents' default codec: CloudNet's 4 blocks per page, a 64 MiB block
/// cache and 64 MiB of page history at each end, deltas up to half a page.
pub fn default_codec() -> CodecConfig {
    CodecConfig {
        zstd_level: None,
        ..CodecConfig::default()
    }
}

impl SenderOptions {
    pub fn new(vm: &str) -> SenderOptions {
        SenderOptions {
            vm: vm.to_string(),
            group: None,
            site: None,
            dedup: true,
            zstd_level: Some(3),
            batch_pages: 512,
            window: 4,
            keep_bytes: 512 << 20,
            ack_timeout: Duration::from_secs(120),
            codec: Some(default_codec()),
            read_ahead: Some(Duration::from_millis(100)),
        }
    }
}

/// Longest a partial batch waits for more input before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Stream bytes per batch, whatever the page count.
const BATCH_BYTES: usize = 2 << 20;
const READ_CHUNK: usize = 256 << 10;
/// Rough size of a zero-page record on the wire (address + fill byte).
const ZERO_RECORD: u64 = 9;

/// What the tokenizer hands on.
enum Piece {
    Batch(TokBatch),
    End {
        stream_len: u64,
        digest: u128,
        stats: StreamStats,
    },
}

struct TokBatch {
    tokens: Vec<Token>,
    /// One id per `Token::Page`, in order.
    ids: Vec<ChunkId>,
    /// One guest-page key per `Token::Page`, in order.
    keys: Vec<u64>,
}

/// A batch with the site's answers.
struct Looked {
    batch: TokBatch,
    held: HashSet<ChunkId>,
    /// `None`: no group (or the claim failed): send what the site lacks.
    won: Option<HashSet<ChunkId>>,
}

/// One encoded batch, with what it counts for in the report.
struct Encoded {
    frame: Bytes,
    blob_len: u64,
    compressed: bool,
    literal: u64,
    raw: u64,
    hashes: u64,
    codec: CodecTally,
}

/// What the page codec did to one batch.
#[derive(Default, Clone, Copy)]
struct CodecTally {
    cache_pages: u64,
    delta_pages: u64,
    saved_cache: u64,
    saved_delta: u64,
}

/// Pages sent by id, kept (bounded, FIFO) so the receiver can pull them.
struct PageCache {
    map: HashMap<ChunkId, Bytes>,
    order: VecDeque<ChunkId>,
    cap_pages: usize,
}

impl PageCache {
    fn insert(&mut self, id: ChunkId, page: Bytes) {
        if self.cap_pages == 0 || self.map.contains_key(&id) {
            return;
        }
        while self.map.len() >= self.cap_pages {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(id, page);
        self.order.push_back(id);
    }
}

/// Run the sender over `input` (QEMU's stream) and the WAN connection.
pub async fn send<R: Read + Send + 'static>(
    input: R,
    conn: TcpStream,
    opts: SenderOptions,
) -> Result<VmReport> {
    let started = Instant::now();
    // Refused here, before QEMU's stream is touched, not by the receiver.
    proto::check_string("the VM name", &opts.vm).map_err(AgentError::Unsupported)?;
    conn.set_nodelay(true).ok();
    let (mut rd, mut wr) = conn.into_split();
    // A fresh generation per connection: no codec frame of an earlier
    // (dropped) connection can ever match the state of this one.
    let generation: u32 = rand::random();
    let mut encoder = match &opts.codec {
        Some(c) => Some(PageEncoder::new(c.clone(), generation)?),
        None => None,
    };
    wire::write_frame(
        &mut wr,
        &Frame::Hello {
            protocol: PROTOCOL,
            vm: opts.vm.clone(),
            group: opts.group.clone(),
            generation,
            codec: opts.codec.clone(),
        },
    )
    .await?;
    wr.flush()
        .await
        .map_err(|e| AgentError::io("sending to the receiver", e))?;
    // The receiver accepts or refuses (protocol, codec settings) before
    // any page is sent.
    match tokio::time::timeout(opts.ack_timeout, wire::read_frame(&mut rd)).await {
        Err(_) => return Err(AgentError::Timeout("receiver did not answer the hello".into())),
        Ok(Ok(Some(Frame::Ack { ok: true, .. }))) => {}
        Ok(Ok(Some(Frame::Ack { ok: false, message }))) => {
            return Err(AgentError::Peer(format!("receiver refused: {message}")))
        }
        Ok(Ok(Some(other))) => {
            return Err(AgentError::Peer(format!(
                "expected the receiver's answer to the hello, got {other:?}"
            )))
        }
        Ok(Ok(None) | Err(_)) => {
            return Err(AgentError::Peer(format!(
                "receiver closed the connection after the hello (an agent older than protocol {PROTOCOL}?)"
            )))
        }
    }
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let cache = Arc::new(Mutex::new(PageCache {
        map: HashMap::new(),
        order: VecDeque::new(),
        cap_pages: opts.keep_bytes / PAGE_SIZE,
    }));
    let pulled_bytes = Arc::new(AtomicU64::new(0));
    let pulled_pages = Arc::new(AtomicU64::new(0));
    let (ack_tx, ack_rx) = oneshot::channel();
    let responder = tokio::spawn(answer_pulls(
        rd,
        wr.clone(),
        cache.clone(),
        pulled_bytes.clone(),
        pulled_pages.clone(),
        ack_tx,
    ));

    let (piece_tx, mut piece_rx) = mpsc::channel::<Piece>(opts.window * 2);
    let batch_pages = opts.batch_pages.max(1);
    let read_ahead = Arc::new(ReadAhead::new(opts.read_ahead));
    // However this function ends, a tokenizer waiting for room wakes up.
    let _close_read_ahead = CloseOnDrop(read_ahead.clone());
    let tok_read_ahead = read_ahead.clone();
    let tokenizer = std::thread::Builder::new()
        .name("migrate-tokenize".into())
        .spawn(move || tokenize_input(input, batch_pages, piece_tx, &tok_read_ahead))
        .map_err(|e| AgentError::io("starting the tokenizer", e))?;

    let mut report = VmReport {
        vm: opts.vm.clone(),
        group: opts.group.clone(),
        ..Default::default()
    };
    let queries = Arc::new(AtomicU64::new(0));
    let known: Arc<Mutex<HashSet<ChunkId>>> = Arc::default();

    // Frames are written by their own task, in order, so site queries
    // (tasks too) and encoding keep going while the WAN is busy.
    let (enc_tx, mut enc_rx) = mpsc::channel::<tokio::task::JoinHandle<Result<Encoded>>>(2);
    let writer_wr = wr.clone();
    let writer_read_ahead = read_ahead.clone();
    let writer = tokio::spawn(async move {
        let _close = CloseOnDrop(writer_read_ahead.clone());
        let mut totals = VmReport::default();
        while let Some(h) = enc_rx.recv().await {
            let enc = h
                .await
                .map_err(|e| AgentError::Internal(format!("encode task: {e}")))??;
            account(&mut totals, &enc);
            let mut w = writer_wr.lock().await;
            w.write_all(&enc.frame)
                .await
                .map_err(|e| AgentError::io("sending to the receiver", e))?;
            // One frame per batch, in stream order.
            writer_read_ahead.written();
        }
        Ok::<_, AgentError>(totals)
    });

    // Claims are chained so they reach the site in stream order.
    let mut lookups: VecDeque<tokio::task::JoinHandle<Result<Looked>>> = VecDeque::new();
    // The codec runs batch after batch in stream order (its state is a
    // sequence); each batch waits for the previous one's signal.
    let codec = encoder.take().map(|e| Arc::new(Mutex::new(e)));
    let mut prev_codec: Option<oneshot::Receiver<()>> = None;
    let mut prev_claim: Option<oneshot::Receiver<()>> = None;
    let mut end: Option<(u64, u128, StreamStats)> = None;
    let mut input_done = false;
    enum Event {
        Piece(Option<Piece>),
        Looked(std::result::Result<Result<Looked>, tokio::task::JoinError>),
    }
    loop {
        let full = input_done || lookups.len() >= opts.window;
        let event = match lookups.front_mut() {
            None if input_done => break,
            None => Event::Piece(piece_rx.recv().await),
            Some(front) if full => Event::Looked(front.await),
            Some(front) => tokio::select! {
                biased;
                r = front => Event::Looked(r),
                p = piece_rx.recv() => Event::Piece(p),
            },
        };
        match event {
            Event::Piece(Some(Piece::Batch(b))) => {
                let (done_tx, done_rx) = oneshot::channel();
                let prev = prev_claim.replace(done_rx);
                lookups.push_back(tokio::spawn(lookup(
                    b,
                    opts.clone(),
                    known.clone(),
                    queries.clone(),
                    prev,
                    done_tx,
                )));
            }
            Event::Piece(Some(Piece::End {
                stream_len,
                digest,
                stats,
            })) => {
                end = Some((stream_len, digest, stats));
                input_done = true;
            }
            Event::Piece(None) => input_done = true,
            Event::Looked(r) => {
                lookups.pop_front();
                let looked = r.map_err(|e| AgentError::Internal(format!("lookup task: {e}")))??;
                let plan = decide(looked, &opts, &known, &cache, &mut report);
                let level = opts.zstd_level;
                let codec = codec.clone();
                let (done_tx, done_rx) = oneshot::channel();
                let prev = prev_codec.replace(done_rx);
                let h = tokio::task::spawn_blocking(move || {
                    let mut tally = CodecTally::default();
                    let plan = match codec {
                        Some(c) => {
                            if let Some(p) = prev {
                                // An error upstream drops the sender: the
                                // writer stops at that batch anyway.
                                let _ = p.blocking_recv();
                            }
                            let r = apply_codec(&mut c.lock(), plan, &mut tally);
                            let _ = done_tx.send(());
                            r?
                        }
                        None => plan,
                    };
                    Ok(encode(plan, level, tally))
                });
                if enc_tx.send(h).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(enc_tx);
    let totals = writer
        .await
        .map_err(|e| AgentError::Internal(format!("writer task: {e}")))??;
    report.wan = totals.wan;
    report.detail.saved = totals.detail.saved;
    report.detail.pages.cache = totals.detail.pages.cache;
    report.detail.pages.delta = totals.detail.pages.delta;
    let tokenizer_result = tokenizer
        .join()
        .map_err(|_| AgentError::Internal("tokenizer panicked".into()))?;
    tokenizer_result?;
    let (stream_len, digest, stats) =
        end.ok_or_else(|| AgentError::Internal("input ended without a digest".into()))?;
    {
        let mut w = wr.lock().await;
        wire::write_frame(&mut *w, &Frame::End { stream_len, digest }).await?;
        w.flush()
            .await
            .map_err(|e| AgentError::io("sending to the receiver", e))?;
    }
    let ack = tokio::time::timeout(opts.ack_timeout, ack_rx)
        .await
        .map_err(|_| {
            AgentError::Timeout(format!(
                "no acknowledgement from the receiver within {} s",
                opts.ack_timeout.as_secs()
            ))
        })?
        .map_err(|_| AgentError::Peer("connection closed before the acknowledgement".into()))?;
    responder.abort();
    let (ok, message) = ack;
    report.detail.stream_bytes = stream_len;
    report.detail.pages.zero = stats.zero_pages;
    report.wan.zero = stats.zero_pages * ZERO_RECORD;
    report.detail.passthrough_from = stats.passthrough_from;
    report.detail.passthrough_reason = stats.passthrough_reason;
    report.detail.pages.pulled = pulled_pages.load(Ordering::Relaxed);
    report.wan.pulled = pulled_bytes.load(Ordering::Relaxed);
    report.wan.queries = queries.load(Ordering::Relaxed);
    report.wan.total = report.wan.sum_of_parts();
    report.seconds = started.elapsed().as_secs_f64();
    report.detail.verified = ok;
    if !ok {
        return Err(AgentError::Peer(format!(
            "receiver refused the stream: {message}"
        )));
    }
    Ok(report)
}

/// Reader + tokenizer: runs on its own threads (blocking stdin).
fn tokenize_input<R: Read + Send + 'static>(
    mut input: R,
    batch_pages: usize,
    out: mpsc::Sender<Piece>,
    read_ahead: &ReadAhead,
) -> Result<()> {
    let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(8);
    let reader = std::thread::Builder::new()
        .name("migrate-read".into())
        .spawn(move || loop {
            let mut buf = vec![0u8; READ_CHUNK];
            match input.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if chunk_tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = chunk_tx.send(Err(e));
                    return;
                }
            }
        })
        .map_err(|e| AgentError::io("starting the reader", e))?;

    let mut tok = Tokenizer::new();
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    let mut tokens = Vec::new();
    let mut pending_bytes = 0usize;
    let mut pages = 0usize;
    let mut since: Option<Instant> = None;
    let flush = |tokens: &mut Vec<Token>, tok: &mut Tokenizer| -> Result<()> {
        tok.flush_literal(tokens);
        if tokens.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(tokens);
        let stream_bytes: usize = batch
            .iter()
            .map(|t| match t {
                Token::Literal(b) | Token::Page(b) => b.len(),
            })
            .sum();
        // Wait here, not in QEMU's pipe buffer: while the WAN is behind,
        // QEMU must see the stream drain at the WAN's pace.
        if !read_ahead.admit(stream_bytes as u64) {
            return Err(AgentError::Internal("sender pipeline stopped".into()));
        }
        let ids = page_ids(&batch);
        let keys = tok.take_page_keys();
        out.blocking_send(Piece::Batch(TokBatch {
            tokens: batch,
            ids,
            keys,
        }))
        .map_err(|_| AgentError::Internal("sender pipeline stopped".into()))
    };
    loop {
        let msg = match since {
            None => chunk_rx.recv().map_err(|_| None),
            Some(t) => {
                let left = FLUSH_AFTER.saturating_sub(t.elapsed());
                chunk_rx.recv_timeout(left).map_err(|e| match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => Some(()),
                    std::sync::mpsc::RecvTimeoutError::Disconnected => None,
                })
            }
        };
        match msg {
            Ok(Ok(chunk)) => {
                digest.update(&chunk);
                let before = tokens.len();
                tok.feed(&chunk, &mut tokens);
                if let Some(why) = &tok.stats().unsupported {
                    return Err(AgentError::Unsupported(why.clone()));
                }
                pages += tokens[before..]
                    .iter()
                    .filter(|t| matches!(t, Token::Page(_)))
                    .count();
                pending_bytes += chunk.len();
                since.get_or_insert_with(Instant::now);
                if pages >= batch_pages || pending_bytes >= BATCH_BYTES {
                    flush(&mut tokens, &mut tok)?;
                    pages = 0;
                    pending_bytes = 0;
                    since = None;
                }
            }
            Ok(Err(e)) => return Err(AgentError::io("reading the migration stream", e)),
            Err(Some(())) => {
                flush(&mut tokens, &mut tok)?;
                pages = 0;
                pending_bytes = 0;
                since = None;
            }
            Err(None) => break,
        }
    }
    let _ = reader.join();
    tok.finish(&mut tokens);
    flush(&mut tokens, &mut tok)?;
    let stats = tok.stats().clone();
    out.blocking_send(Piece::End {
        stream_len: stats.bytes,
        digest: digest.digest128(),
        stats,
    })
    .map_err(|_| AgentError::Internal("sender pipeline stopped".into()))
}

/// BLAKE3 ids of a batch's pages, on all cores.
fn page_ids(tokens: &[Token]) -> Vec<ChunkId> {
    let pages: Vec<&Bytes> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Page(p) => Some(p),
            Token::Literal(_) => None,
        })
        .collect();
    pages.par_iter().map(|p| ChunkId::of(p)).collect()
}

/// Ask the site which pages it holds and claim the rest for the group.
/// Query failures cost deduplication, never correctness: the pages are
/// then sent in full.
async fn lookup(
    batch: TokBatch,
    opts: SenderOptions,
    known: Arc<Mutex<HashSet<ChunkId>>>,
    queries: Arc<AtomicU64>,
    prev_claim: Option<oneshot::Receiver<()>>,
    claim_done: oneshot::Sender<()>,
) -> Result<Looked> {
    let mut held = HashSet::new();
    let mut won = None;
    let site = opts.site.as_ref().filter(|_| opts.dedup);
    if let Some(site) = site {
        let ask: Vec<ChunkId> = {
            let known = known.lock();
            let mut seen = HashSet::new();
            batch
                .ids
                .iter()
                .filter(|id| !known.contains(id) && seen.insert(**id))
                .copied()
                .collect()
        };
        if !ask.is_empty() {
            match site.have(&ask).await {
                Ok(h) => {
                    queries.fetch_add(65 * (ask.len() + h.len()) as u64, Ordering::Relaxed);
                    held = h;
                }
                Err(e) => tracing::warn!("site `have` failed, sending pages in full: {e}"),
            }
        }
        if let Some(group) = &opts.group {
            let missing: Vec<ChunkId> = ask.into_iter().filter(|i| !held.contains(i)).collect();
            if let Some(p) = prev_claim {
                let _ = p.await;
            }
            if !missing.is_empty() {
                match site.claim(group, &missing).await {
                    Ok(w) => {
                        queries.fetch_add(65 * (missing.len() + w.len()) as u64, Ordering::Relaxed);
                        won = Some(w);
                    }
                    Err(e) => tracing::warn!("site `claim` failed, sending pages in full: {e}"),
                }
            } else {
                won = Some(HashSet::new());
            }
        }
    }
    let _ = claim_done.send(());
    Ok(Looked { batch, held, won })
}

enum Item {
    Literal(Bytes),
    Raw(Bytes),
    Hash(ChunkId),
    /// A page to send in full, still to go through the codec.
    Page {
        key: u64,
        page: Bytes,
    },
    /// A page as a codec frame.
    Coded {
        key: u64,
        frame: Bytes,
    },
}

/// Decide, in stream order, how each page crosses.
fn decide(
    looked: Looked,
    opts: &SenderOptions,
    known: &Mutex<HashSet<ChunkId>>,
    cache: &Mutex<PageCache>,
    report: &mut VmReport,
) -> Vec<Item> {
    let Looked { batch, held, won } = looked;
    let mut ids = batch.ids.into_iter();
    let mut keys = batch.keys.into_iter();
    let full = |key: Option<u64>, p: Bytes| match key {
        Some(key) if opts.codec.is_some() => Item::Page { key, page: p },
        _ => Item::Raw(p),
    };
    let mut known = known.lock();
    let mut items = Vec::with_capacity(batch.tokens.len());
    for t in batch.tokens {
        match t {
            Token::Literal(b) => items.push(Item::Literal(b)),
            Token::Page(p) => {
                let key = keys.next();
                let Some(id) = ids.next() else {
                    items.push(Item::Raw(p));
                    continue;
                };
                if !opts.dedup {
                    report.detail.pages.sent += 1;
                    items.push(full(key, p));
                } else if known.contains(&id) {
                    report.detail.pages.repeat += 1;
                    cache.lock().insert(id, p);
                    items.push(Item::Hash(id));
                } else if held.contains(&id) {
                    report.detail.pages.site += 1;
                    known.insert(id);
                    cache.lock().insert(id, p);
                    items.push(Item::Hash(id));
                } else if won.as_ref().is_some_and(|w| !w.contains(&id)) {
                    // Another agent of the group sends it; keep it for a
                    // pull in case that agent never delivers.
                    report.detail.pages.group += 1;
                    known.insert(id);
                    cache.lock().insert(id, p);
                    items.push(Item::Hash(id));
                } else {
                    report.detail.pages.sent += 1;
                    known.insert(id);
                    items.push(full(key, p));
                }
            }
        }
    }
    items
}

/// Run a batch's full pages through the codec, in order (blocking).
fn apply_codec(
    enc: &mut PageEncoder,
    items: Vec<Item>,
    tally: &mut CodecTally,
) -> Result<Vec<Item>> {
    let mut frame = Vec::with_capacity(PAGE_SIZE + 64);
    items
        .into_iter()
        .map(|i| match i {
            Item::Page { key, page } => {
                let o = enc.encode(key, &page, &mut frame)?;
                match o.kind {
                    FrameKind::Blocks => tally.cache_pages += 1,
                    FrameKind::Delta => tally.delta_pages += 1,
                    FrameKind::Raw => {}
                }
                tally.saved_cache += o.saved_by_cache;
                tally.saved_delta += o.saved_by_delta;
                Ok(Item::Coded {
                    key,
                    frame: Bytes::copy_from_slice(&frame),
                })
            }
            other => Ok(other),
        })
        .collect()
}

/// Build one batch frame (blocking: zstd).
fn encode(items: Vec<Item>, level: Option<i32>, codec: CodecTally) -> Encoded {
    let mut ops = Vec::with_capacity(items.len());
    let blob_len: usize = items
        .iter()
        .map(|i| match i {
            Item::Literal(b) | Item::Raw(b) => b.len(),
            Item::Page { page, .. } => page.len(),
            Item::Coded { frame, .. } => frame.len(),
            Item::Hash(_) => 0,
        })
        .sum();
    let mut blob = BytesMut::with_capacity(blob_len);
    let (mut literal, mut raw, mut hashes) = (0u64, 0u64, 0u64);
    for i in items {
        match i {
            Item::Literal(b) => {
                literal += b.len() as u64;
                blob.extend_from_slice(&b);
                match ops.last_mut() {
                    Some(Op::Literal(n)) => *n += b.len() as u32,
                    _ => ops.push(Op::Literal(b.len() as u32)),
                }
            }
            // A page the codec did not see (no key) goes raw.
            Item::Raw(p) | Item::Page { page: p, .. } => {
                raw += p.len() as u64;
                blob.extend_from_slice(&p);
                ops.push(Op::Raw);
            }
            Item::Coded { key, frame } => {
                raw += frame.len() as u64;
                blob.extend_from_slice(&frame);
                ops.push(Op::Coded {
                    key,
                    len: frame.len() as u32,
                });
            }
            Item::Hash(id) => {
                hashes += 1;
                ops.push(Op::Hash(id));
            }
        }
    }
    let raw_len = blob.len() as u32;
    let mut compressed = false;
    let mut blob = blob.freeze();
    if let Some(level) = level.filter(|_| !blob.is_empty()) {
        if let Ok(z) = zstd::bulk::compress(&blob, level) {
            if z.len() < blob.len() {
                blob = Bytes::from(z);
                compressed = true;
            }
        }
    }
    let blob_len = blob.len() as u64;
    let frame = Frame::Batch {
        ops,
        raw_len,
        compressed,
        blob,
    }
    .encode();
    Encoded {
        frame,
        blob_len,
        compressed,
        literal,
        raw,
        hashes,
        codec,
    }
}

fn account(report: &mut VmReport, e: &Encoded) {
    let w = &mut report.wan;
    if e.compressed {
        w.compressed += e.blob_len;
    } else {
        // Zero-page records are counted apart from other literals.
        w.literal += e.literal;
        w.raw += e.raw;
    }
    w.by_hash += 32 * e.hashes;
    w.framing += e.frame.len() as u64 - e.blob_len - 32 * e.hashes;
    let d = &mut report.detail;
    d.pages.cache += e.codec.cache_pages;
    d.pages.delta += e.codec.delta_pages;
    d.saved.cache += e.codec.saved_cache;
    d.saved.delta += e.codec.saved_delta;
}

/// Serve the receiver's pulls until it acknowledges the end.
async fn answer_pulls(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    wr: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    cache: Arc<Mutex<PageCache>>,
    pulled_bytes: Arc<AtomicU64>,
    pulled_pages: Arc<AtomicU64>,
    ack: oneshot::Sender<(bool, String)>,
) {
    loop {
        match wire::read_frame(&mut rd).await {
            Ok(Some(Frame::Pull(ids))) => {
                let pages: Vec<(ChunkId, Option<Bytes>)> = {
                    let c = cache.lock();
                    ids.iter().map(|id| (*id, c.map.get(id).cloned())).collect()
                };
                let found = pages.iter().filter(|(_, p)| p.is_some()).count();
                let frame = Frame::Pulled(pages).encode();
                pulled_pages.fetch_add(found as u64, Ordering::Relaxed);
                pulled_bytes
                    .fetch_add((frame.len() + 5 + 32 * ids.len()) as u64, Ordering::Relaxed);
                let mut w = wr.lock().await;
                if let Err(e) = w.write_all(&frame).await {
                    tracing::warn!("answering a pull: {e}");
                    return;
                }
            }
            Ok(Some(Frame::Ack { ok, message })) => {
                let _ = ack.send((ok, message));
                return;
            }
            Ok(Some(other)) => {
                tracing::warn!("unexpected frame from the receiver: {other:?}");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("WAN connection: {e}");
                return;
            }
        }
    }
}
