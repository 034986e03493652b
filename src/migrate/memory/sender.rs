//! The sending agent: QEMU's migration stream in (stdin of `exec:`), WAN
//! frames out.
//!
//! Pipeline, every stage bounded so QEMU feels the WAN's pace:
//! reader thread (stdin) -> tokenizer thread (pages, ids, whole-stream
//! digest) -> site queries (`have`, then `claim` for the group; a window
//! of batches in flight, each asking only about ids no earlier batch
//! asked, so their claims are disjoint and none waits for another's
//! answer) -> decisions (in order) -> page codec (blocking pool, one batch at a time in stream
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
//!
//! Stop-and-copy (`switchover`): once the stream shows QEMU stopped the
//! guest, every round trip that the WAN writer has to wait for is guest
//! pause. Site queries go on only while their answers come back in time:
//! the oldest batch's answer is waited for at most a short grace (about
//! twice what answers have been taking, 20-200 ms) after the stop; when one
//! is late, every query still out is given up and no batch asks again
//! (`--no-switchover-lookups`: none asks after the stop at all). Such
//! batches are decided from what the sender already knows: pages sent
//! earlier on this connection or held by the site by its earlier answers go
//! by id (the receiver has them or finds them at its own site, no WAN round
//! trip); the rest goes literally. Pages another agent of the group
//! claimed still go by id: sending them literally after the stop cost 10 %
//! more bytes in the 16-VM capture replay.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::migrate::link::{WanReader, WanStream, WanWriter};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::readahead::{CloseOnDrop, ReadAhead};
use super::report::VmReport;
use super::wire::{self, Frame, Op, PROTOCOL};
use crate::migrate::codec::rcache::{CodecConfig, FrameKind, PageEncoder};
use crate::migrate::error::{AgentError, Result};
use crate::migrate::proto;
use crate::qemu::stream::{StreamStats, Token, PAGE_SIZE};
use crate::store::ChunkId;
use chunk_api::ChunkClient;

mod pulls;
mod switchover;
mod tokenize;
use pulls::{answer_pulls, PageCache};
use switchover::{late_answer_grace, Switchover};
use tokenize::tokenize_input;

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
    /// After QEMU stopped the guest, still ask the site about new batches
    /// (their answers overlap the backlog on the WAN) until one answer is
    /// late; `false`: ask nothing once the guest is stopped.
    pub switchover_lookups: bool,
    /// How long, once the guest is stopped, the oldest batch's site answer
    /// is waited for before everything still unanswered goes by what the
    /// sender knows (`None`: about twice what answers have been taking,
    /// 20-200 ms).
    pub switchover_grace: Option<Duration>,
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
            switchover_lookups: true,
            switchover_grace: None,
        }
    }
}

/// Unsent bytes the WAN socket may hold (see `WanStream::limit_unsent`):
/// about 20 ms at 100 Mbit/s, enough that a busy machine's writer keeps
/// the link full, little to drain after the guest stopped.
const UNSENT_BYTES: u32 = 256 << 10;

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

/// What the site answered about a batch's pages.
#[derive(Default)]
struct Answers {
    held: HashSet<ChunkId>,
    /// Claimed first by another agent of the group (empty without a group
    /// or when the claim failed: then what the site lacks is sent).
    lost: HashSet<ChunkId>,
}

type LookupTask = tokio::task::JoinHandle<Result<Answers>>;

/// A batch waiting, in stream order, for its site answers (`None`: none
/// asked, e.g. after the switchover).
struct Waiting {
    batch: TokBatch,
    lookup: Option<LookupTask>,
    asked: Instant,
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
    answers: Answers,
}

/// One encoded batch, with what it counts for in the report.
struct Encoded {
    frame: Bytes,
    blob_len: u64,
    compressed: bool,
    literal: u64,
    raw: u64,
    hashes: u64,
    /// Pages in full (raw or coded).
    full_pages: u64,
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

/// Run the sender over `input` (QEMU's stream) and the WAN connection.
pub async fn send<R: Read + Send + 'static>(
    input: R,
    conn: WanStream,
    opts: SenderOptions,
) -> Result<VmReport> {
    let started = Instant::now();
    // Refused here, before QEMU's stream is touched, not by the receiver.
    proto::check_string("the VM name", &opts.vm).map_err(AgentError::Unsupported)?;
    conn.set_nodelay(true).ok();
    if let Err(e) = conn.limit_unsent(UNSENT_BYTES) {
        tracing::warn!("limiting the WAN socket's unsent bytes: {e}");
    }
    let (mut rd, mut wr) = conn.split();
    // A fresh generation per connection: no codec frame of an earlier
    // (dropped) connection can ever match the state of this one.
    let generation: u32 = rand::random();
    let encoder = match &opts.codec {
        Some(c) => Some(PageEncoder::new(c.clone(), generation)?),
        None => None,
    };
    hello(&mut rd, &mut wr, &opts, generation).await?;
    let mut session = SendSession::start(input, rd, wr, opts, encoder)?;
    session.pump().await?;
    session.finish(started).await
}

/// Send the `Hello` and wait for the receiver's answer: it accepts or
/// refuses (protocol, codec settings) before any page is sent.
async fn hello(
    rd: &mut WanReader,
    wr: &mut WanWriter,
    opts: &SenderOptions,
    generation: u32,
) -> Result<()> {
    wire::write_frame(
        wr,
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
    match tokio::time::timeout(opts.ack_timeout, wire::read_frame(rd)).await {
        Err(_) => Err(AgentError::Timeout("receiver did not answer the hello".into())),
        Ok(Ok(Some(Frame::Ack { ok: true, .. }))) => Ok(()),
        Ok(Ok(Some(Frame::Ack { ok: false, message }))) => {
            Err(AgentError::Peer(format!("receiver refused: {message}")))
        }
        Ok(Ok(Some(other))) => Err(AgentError::Peer(format!(
            "expected the receiver's answer to the hello, got {other:?}"
        ))),
        Ok(Ok(None) | Err(_)) => Err(AgentError::Peer(format!(
            "receiver closed the connection after the hello (an agent older than protocol {PROTOCOL}?)"
        ))),
    }
}

type EncodeTask = tokio::task::JoinHandle<Result<Encoded>>;

/// What the main loop waits for.
enum Event {
    Piece(Option<Piece>),
    Answered(std::result::Result<Result<Answers>, tokio::task::JoinError>),
    /// The switchover began and the oldest batch's answers are overdue.
    GiveUp,
}

/// One migration stream being sent, after the hello: the pipeline's
/// tasks and threads, their channels, and the report so far.
struct SendSession {
    opts: SenderOptions,
    wr: Arc<tokio::sync::Mutex<WanWriter>>,
    cache: Arc<Mutex<PageCache>>,
    pulled_bytes: Arc<AtomicU64>,
    pulled_pages: Arc<AtomicU64>,
    ack_rx: Option<oneshot::Receiver<(bool, String)>>,
    /// Answers the receiver's pulls until its acknowledgement.
    responder: tokio::task::JoinHandle<()>,
    /// However the send ends, a tokenizer waiting for room wakes up.
    _close_read_ahead: CloseOnDrop,
    tokenizer: Option<std::thread::JoinHandle<Result<()>>>,
    piece_rx: mpsc::Receiver<Piece>,
    /// Encode tasks to the writer, in stream order.
    enc_tx: Option<mpsc::Sender<EncodeTask>>,
    writer: Option<tokio::task::JoinHandle<Result<VmReport>>>,
    report: VmReport,
    queries: Arc<AtomicU64>,
    known: Arc<Mutex<HashSet<ChunkId>>>,
    /// Batches and their site queries in flight, oldest first.
    lookups: VecDeque<Waiting>,
    switchover: Arc<Switchover>,
    /// Set when the tokenizer reads the switchover marker.
    stop_rx: tokio::sync::watch::Receiver<Option<Instant>>,
    /// Smoothed time the site took to answer a batch.
    answer_time: Option<Duration>,
    /// When the oldest batch became the oldest (its wait started).
    front_since: Instant,
    /// An answer came too late after the stop: no batch asks any more.
    site_late: bool,
    codec: Option<Arc<Mutex<PageEncoder>>>,
    // The codec runs batch after batch in stream order (its state is a
    // sequence); each batch waits for the previous one's signal.
    prev_codec: Option<oneshot::Receiver<()>>,
    /// Every id some batch has asked the site about. A later batch does
    /// not ask again: the earlier batch is decided first (in stream order)
    /// and its decision puts the id in `known`, whatever the site said. So
    /// the batches in flight claim disjoint sets and need not wait for each
    /// other's answers.
    asked: HashSet<ChunkId>,
    end: Option<(u64, u128, StreamStats)>,
    input_done: bool,
}

impl SendSession {
    /// Start the pull responder, the tokenizer and the WAN writer.
    fn start<R: Read + Send + 'static>(
        input: R,
        rd: WanReader,
        wr: WanWriter,
        opts: SenderOptions,
        encoder: Option<PageEncoder>,
    ) -> Result<SendSession> {
        let wr = Arc::new(tokio::sync::Mutex::new(wr));
        let cache = Arc::new(Mutex::new(PageCache::new(opts.keep_bytes / PAGE_SIZE)));
        let pulled_bytes = Arc::new(AtomicU64::new(0));
        let pulled_pages = Arc::new(AtomicU64::new(0));
        let (ack_tx, ack_rx) = oneshot::channel();
        let (switchover, stop_rx) = Switchover::new();
        let switchover = Arc::new(switchover);
        let responder = tokio::spawn(answer_pulls(
            rd,
            wr.clone(),
            cache.clone(),
            pulled_bytes.clone(),
            pulled_pages.clone(),
            ack_tx,
            switchover.clone(),
        ));

        let (piece_tx, piece_rx) = mpsc::channel::<Piece>(opts.window * 2);
        let batch_pages = opts.batch_pages.max(1);
        let read_ahead = Arc::new(ReadAhead::new(opts.read_ahead));
        let close_read_ahead = CloseOnDrop(read_ahead.clone());
        let tok_read_ahead = read_ahead.clone();
        let tok_switchover = switchover.clone();
        let tokenizer = std::thread::Builder::new()
            .name("migrate-tokenize".into())
            .spawn(move || {
                tokenize_input(
                    input,
                    batch_pages,
                    piece_tx,
                    &tok_read_ahead,
                    &tok_switchover,
                )
            })
            .map_err(|e| AgentError::io("starting the tokenizer", e))?;

        let report = VmReport {
            vm: opts.vm.clone(),
            group: opts.group.clone(),
            ..Default::default()
        };
        let (enc_tx, writer) = spawn_writer(wr.clone(), read_ahead, switchover.clone());
        Ok(SendSession {
            opts,
            wr,
            cache,
            pulled_bytes,
            pulled_pages,
            ack_rx: Some(ack_rx),
            responder,
            _close_read_ahead: close_read_ahead,
            tokenizer: Some(tokenizer),
            piece_rx,
            enc_tx: Some(enc_tx),
            writer: Some(writer),
            report,
            queries: Arc::new(AtomicU64::new(0)),
            known: Arc::default(),
            lookups: VecDeque::new(),
            switchover,
            stop_rx,
            answer_time: None,
            front_since: Instant::now(),
            site_late: false,
            codec: encoder.map(|e| Arc::new(Mutex::new(e))),
            prev_codec: None,
            asked: HashSet::new(),
            end: None,
            input_done: false,
        })
    }

    /// The main loop: tokenized batches go to the site queries (a window
    /// of them in flight), answered batches, in order, to the decisions
    /// and the encoders, until the input ends and every query is answered.
    async fn pump(&mut self) -> Result<()> {
        loop {
            // A batch that asked nothing goes on at once (in order).
            if self.lookups.front().is_some_and(|w| w.lookup.is_none()) {
                if let Some(w) = self.lookups.pop_front() {
                    self.front_since = Instant::now();
                    let looked = Looked {
                        batch: w.batch,
                        answers: Answers::default(),
                    };
                    if !self.start_encode(looked).await {
                        break;
                    }
                }
                continue;
            }
            let full = self.input_done || self.lookups.len() >= self.opts.window;
            let grace = self
                .opts
                .switchover_grace
                .unwrap_or_else(|| late_answer_grace(self.answer_time));
            let stop_rx = &mut self.stop_rx;
            let front_since = self.front_since;
            let event = match self.lookups.front_mut() {
                Some(Waiting {
                    lookup: Some(front),
                    asked,
                    ..
                }) => {
                    let since = front_since.max(*asked);
                    if full {
                        tokio::select! {
                            biased;
                            r = front => Event::Answered(r),
                            () = overdue(stop_rx, since, grace) => Event::GiveUp,
                        }
                    } else {
                        tokio::select! {
                            biased;
                            r = front => Event::Answered(r),
                            () = overdue(stop_rx, since, grace) => Event::GiveUp,
                            p = self.piece_rx.recv() => Event::Piece(p),
                        }
                    }
                }
                _ if self.input_done => break,
                _ => Event::Piece(self.piece_rx.recv().await),
            };
            match event {
                Event::Piece(Some(Piece::Batch(b))) => self.start_lookup(b),
                Event::Piece(Some(Piece::End {
                    stream_len,
                    digest,
                    stats,
                })) => {
                    self.end = Some((stream_len, digest, stats));
                    self.input_done = true;
                }
                Event::Piece(None) => self.input_done = true,
                Event::Answered(r) => {
                    let Some(w) = self.lookups.pop_front() else {
                        continue;
                    };
                    self.front_since = Instant::now();
                    let took = w.asked.elapsed();
                    self.answer_time = Some(match self.answer_time {
                        Some(t) => t.mul_f64(0.7) + took.mul_f64(0.3),
                        None => took,
                    });
                    let answers =
                        r.map_err(|e| AgentError::Internal(format!("lookup task: {e}")))??;
                    let looked = Looked {
                        batch: w.batch,
                        answers,
                    };
                    if !self.start_encode(looked).await {
                        break;
                    }
                }
                Event::GiveUp => self.give_up_lookups(),
            }
        }
        Ok(())
    }

    /// The guest is paused and the site is late: stop waiting for any
    /// answer still out (the batches go by what the sender knows).
    fn give_up_lookups(&mut self) {
        let mut n = 0;
        for w in &mut self.lookups {
            if let Some(h) = w.lookup.take() {
                h.abort();
                n += 1;
            }
        }
        self.site_late = true;
        self.switchover.gave_up(n);
        tracing::info!("switchover: the site is late; gave up waiting for it on {n} batches");
    }

    /// Ask the site about a batch's ids that neither this migration knows
    /// nor an earlier batch asked about, in a task of its own; after the
    /// switchover, ask nothing.
    fn start_lookup(&mut self, batch: TokBatch) {
        let stopped = self.switchover.started();
        let asks = self.opts.dedup
            && self.opts.site.is_some()
            && !(stopped && (self.site_late || !self.opts.switchover_lookups));
        let lookup = asks.then(|| {
            let ask: Vec<ChunkId> = {
                let known = self.known.lock();
                let asked = &mut self.asked;
                batch
                    .ids
                    .iter()
                    .filter(|id| !known.contains(id) && asked.insert(**id))
                    .copied()
                    .collect()
            };
            tokio::spawn(lookup(
                ask,
                self.opts.clone(),
                self.queries.clone(),
                self.switchover.clone(),
            ))
        });
        self.lookups.push_back(Waiting {
            batch,
            lookup,
            asked: Instant::now(),
        });
    }

    /// Decide how an answered batch's pages cross and hand its codec and
    /// encoding task to the writer; false when the writer has stopped.
    async fn start_encode(&mut self, looked: Looked) -> bool {
        let plan = decide(
            looked,
            &self.opts,
            &self.known,
            &self.cache,
            &mut self.report,
        );
        let level = self.opts.zstd_level;
        let codec = self.codec.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let prev = self.prev_codec.replace(done_rx);
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
        match &self.enc_tx {
            Some(tx) => tx.send(h).await.is_ok(),
            None => false,
        }
    }

    /// Wait for the writer and the tokenizer, send the `End`, wait for the
    /// receiver's verdict and complete the report.
    async fn finish(mut self, started: Instant) -> Result<VmReport> {
        drop(self.enc_tx.take());
        let writer = self
            .writer
            .take()
            .ok_or_else(|| AgentError::Internal("writer task already joined".into()))?;
        let totals = writer
            .await
            .map_err(|e| AgentError::Internal(format!("writer task: {e}")))??;
        let report = &mut self.report;
        report.wan = totals.wan;
        report.detail.saved = totals.detail.saved;
        report.detail.pages.cache = totals.detail.pages.cache;
        report.detail.pages.delta = totals.detail.pages.delta;
        if let Some(tokenizer) = self.tokenizer.take() {
            let tokenizer_result = tokenizer
                .join()
                .map_err(|_| AgentError::Internal("tokenizer panicked".into()))?;
            tokenizer_result?;
        }
        let (stream_len, digest, stats) = self
            .end
            .take()
            .ok_or_else(|| AgentError::Internal("input ended without a digest".into()))?;
        {
            let mut w = self.wr.lock().await;
            wire::write_frame(&mut *w, &Frame::End { stream_len, digest }).await?;
            w.flush()
                .await
                .map_err(|e| AgentError::io("sending to the receiver", e))?;
        }
        // The End frame is the sender's last byte of the stream.
        self.switchover.wrote(5 + 24, 0, 0);
        let switchover = self
            .switchover
            .report(stream_len, stats.pages_after_switchover);
        if let Some(s) = &switchover {
            tracing::info!(
                "switchover: last byte {:.0} ms after the guest stopped; {} stream bytes queued then, {} pages after it, {} WAN bytes, {} site round trips",
                s.stop_to_last_byte_ms,
                s.queued_bytes,
                s.stream_pages,
                s.wan_bytes,
                s.site_round_trips
            );
        }
        let ack_rx = self
            .ack_rx
            .take()
            .ok_or_else(|| AgentError::Internal("acknowledgement already taken".into()))?;
        let ack = tokio::time::timeout(self.opts.ack_timeout, ack_rx)
            .await
            .map_err(|_| {
                AgentError::Timeout(format!(
                    "no acknowledgement from the receiver within {} s",
                    self.opts.ack_timeout.as_secs()
                ))
            })?
            .map_err(|_| AgentError::Peer("connection closed before the acknowledgement".into()))?;
        self.responder.abort();
        let (ok, message) = ack;
        let mut report = std::mem::take(&mut self.report);
        report.detail.stream_bytes = stream_len;
        report.detail.pages.zero = stats.zero_pages;
        report.wan.zero = stats.zero_pages * ZERO_RECORD;
        report.detail.passthrough_from = stats.passthrough_from;
        report.detail.passthrough_reason = stats.passthrough_reason;
        report.detail.switchover = switchover;
        report.detail.pages.pulled = self.pulled_pages.load(Ordering::Relaxed);
        report.wan.pulled = self.pulled_bytes.load(Ordering::Relaxed);
        report.wan.queries = self.queries.load(Ordering::Relaxed);
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
}

/// The WAN writer: frames are written by their own task, in order, so
/// site queries (tasks too) and encoding keep going while the WAN is busy.
/// Returns the queue of encode tasks and the writer, which sums up what
/// crossed.
fn spawn_writer(
    wr: Arc<tokio::sync::Mutex<WanWriter>>,
    read_ahead: Arc<ReadAhead>,
    switchover: Arc<Switchover>,
) -> (
    mpsc::Sender<EncodeTask>,
    tokio::task::JoinHandle<Result<VmReport>>,
) {
    let (enc_tx, mut enc_rx) = mpsc::channel::<EncodeTask>(2);
    let writer = tokio::spawn(async move {
        let _close = CloseOnDrop(read_ahead.clone());
        let mut totals = VmReport::default();
        while let Some(h) = enc_rx.recv().await {
            let enc = h
                .await
                .map_err(|e| AgentError::Internal(format!("encode task: {e}")))??;
            account(&mut totals, &enc);
            let mut w = wr.lock().await;
            w.write_all(&enc.frame)
                .await
                .map_err(|e| AgentError::io("sending to the receiver", e))?;
            drop(w);
            // One frame per batch, in stream order.
            read_ahead.written();
            switchover.wrote(enc.frame.len() as u64, enc.full_pages, enc.hashes);
        }
        Ok::<_, AgentError>(totals)
    });
    (enc_tx, writer)
}

/// Ask the site which of `ask` it holds and claim the rest for the group.
/// Query failures cost deduplication, never correctness: the pages are
/// then sent in full.
async fn lookup(
    ask: Vec<ChunkId>,
    opts: SenderOptions,
    queries: Arc<AtomicU64>,
    switchover: Arc<Switchover>,
) -> Result<Answers> {
    let mut answers = Answers::default();
    if let Some(site) = opts.site.as_ref().filter(|_| opts.dedup) {
        // With --no-switchover-lookups nothing is asked once the guest is
        // stopped (see the module doc).
        let allowed = || opts.switchover_lookups || !switchover.started();
        if !ask.is_empty() && allowed() {
            match site.have(&ask).await {
                Ok(h) => {
                    queries.fetch_add(65 * (ask.len() + h.len()) as u64, Ordering::Relaxed);
                    answers.held = h;
                }
                Err(e) => tracing::warn!("site `have` failed, sending pages in full: {e}"),
            }
            switchover.site_answer();
        }
        if let Some(group) = &opts.group {
            let held = &answers.held;
            let missing: Vec<ChunkId> = ask.into_iter().filter(|i| !held.contains(i)).collect();
            if !missing.is_empty() && allowed() {
                match site.claim(group, &missing).await {
                    Ok(w) => {
                        queries.fetch_add(65 * (missing.len() + w.len()) as u64, Ordering::Relaxed);
                        answers.lost = missing.into_iter().filter(|i| !w.contains(i)).collect();
                    }
                    Err(e) => tracing::warn!("site `claim` failed, sending pages in full: {e}"),
                }
                switchover.site_answer();
            }
        }
    }
    Ok(answers)
}

/// Resolves `grace` after the later of the switchover and `since` (never
/// before the switchover).
async fn overdue(
    stop: &mut tokio::sync::watch::Receiver<Option<Instant>>,
    since: Instant,
    grace: Duration,
) {
    let at = match stop.wait_for(Option::is_some).await {
        Ok(v) => *v,
        Err(_) => None,
    };
    match at {
        Some(at) => tokio::time::sleep_until((at.max(since) + grace).into()).await,
        None => std::future::pending().await,
    }
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
    let Looked {
        batch,
        answers: Answers { held, lost },
    } = looked;
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
                } else if lost.contains(&id) {
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
    let (mut literal, mut raw, mut hashes, mut full_pages) = (0u64, 0u64, 0u64, 0u64);
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
                full_pages += 1;
                blob.extend_from_slice(&p);
                ops.push(Op::Raw);
            }
            Item::Coded { key, frame } => {
                raw += frame.len() as u64;
                full_pages += 1;
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
        full_pages,
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
