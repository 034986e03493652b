//! `migrate disk-recv`: takes the batches of `migrate disk-send` off the
//! WAN and writes them into the destination QEMU's NBD export.
//!
//! Blocks sent by id come from the destination site (one batched `?get`
//! per batch, every block checked against its id by the client); a block
//! another sender of the group claimed may still be on its way there, so
//! those get a short, bounded wait, then are pulled from the sender; an id
//! nobody can resolve fails the migration loudly, never becomes zeros.
//! Literal blocks are checked against the id the sender computed, then
//! stored at the site in batches so other VMs of the group, and later
//! migrations, can use them.
//!
//! Two stages: a reader task takes frames off the WAN and prepares the
//! next few batches at once (decompress, check, fetch from the site), while
//! the main loop writes prepared batches into the export in order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::migrate::link::{WanReader, WanStream, WanWriter};
use bytes::{Bytes, BytesMut};
use tokio::io::BufReader;
use tokio::sync::mpsc;

use super::report::{DiskDetail, DiskReport};
use super::wire::{read_frame, write_frame, DiskFrame, DiskOp, BLOCK, DISK_PROTOCOL};
use crate::image::nbd_client::{NbdClient, Reply, MAX_WRITE};
use crate::migrate::error::{AgentError, Result, Unit};
use crate::store::ChunkId;
use chunk_api::ChunkClient;

/// NBD requests in flight to the destination export.
const INFLIGHT: usize = 64;
/// Contiguous data is written in requests up to this size.
const RUN_BYTES: usize = 1 << 20;
/// Batches prepared ahead of the one being written.
const READ_AHEAD: usize = 4;

type PulledBlocks = Vec<(ChunkId, Option<Bytes>)>;

pub struct DiskRecvOptions {
    pub site: Option<ChunkClient>,
    /// How long to wait for a block another sender of the group claimed.
    pub wait: Duration,
    /// Store blocks received in full at the site.
    pub store_blocks: bool,
}

impl Default for DiskRecvOptions {
    fn default() -> Self {
        DiskRecvOptions {
            site: None,
            wait: Duration::from_secs(2),
            store_blocks: true,
        }
    }
}

/// Writes into the export with many requests in flight, never two
/// overlapping ones (NBD does not order concurrent requests).
struct DestWriter {
    nbd: NbdClient,
    inflight: VecDeque<(u64, u64, Reply)>,
}

impl DestWriter {
    async fn make_room(&mut self, start: u64, end: u64) -> Result<()> {
        if self.inflight.iter().any(|(s, e, _)| *s < end && start < *e) {
            self.drain().await?;
        }
        while self.inflight.len() >= INFLIGHT {
            if let Some((_, _, r)) = self.inflight.pop_front() {
                r.wait().await?;
            }
        }
        Ok(())
    }

    async fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        for (i, part) in data.chunks(MAX_WRITE).enumerate() {
            let at = offset + (i * MAX_WRITE) as u64;
            self.make_room(at, at + part.len() as u64).await?;
            let r = self.nbd.write(at, part).await?;
            self.inflight.push_back((at, at + part.len() as u64, r));
        }
        Ok(())
    }

    async fn zero(&mut self, offset: u64, len: u32) -> Result<()> {
        self.make_room(offset, offset + len as u64).await?;
        let r = self.nbd.write_zeroes(offset, len).await?;
        self.inflight.push_back((offset, offset + len as u64, r));
        Ok(())
    }

    async fn drain(&mut self) -> Result<()> {
        while let Some((_, _, r)) = self.inflight.pop_front() {
            r.wait().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        self.drain().await?;
        self.nbd.flush().await?.wait().await?;
        Ok(())
    }
}

/// A batch decompressed, checked, and with the site's blocks fetched.
struct Prepared {
    seq: u64,
    ops: Vec<DiskOp>,
    blob: Bytes,
    compressed: bool,
    /// Literal blocks, checked against their ids.
    literal: Vec<(ChunkId, Bytes)>,
    /// Blocks sent by id that the site had.
    fetched: HashMap<ChunkId, Bytes>,
}

/// What the reader task hands the writing loop, in WAN order.
enum Incoming {
    Batch {
        wire: u64,
        blob_wire: u64,
        task: tokio::task::JoinHandle<Result<Prepared>>,
    },
    Flush {
        wire: u64,
        seq: u64,
    },
    End {
        wire: u64,
    },
    Failed(AgentError),
}

/// Take frames off the WAN; start preparing each batch at once (the
/// channel's bound limits how far ahead); route pull answers aside.
async fn read_ahead(
    mut rd: BufReader<WanReader>,
    tx: mpsc::Sender<Incoming>,
    pulled: mpsc::Sender<(PulledBlocks, u64)>,
    site: Option<ChunkClient>,
    size: u64,
) {
    // After End the sender still answers pulls, until our Done.
    let mut ended = false;
    loop {
        let (f, wire) = match read_frame(&mut rd).await {
            Ok(x) => x,
            Err(_) if ended => return,
            Err(e) => {
                let e = AgentError::Peer(format!("sender connection lost before the end: {e}"));
                let _ = tx.send(Incoming::Failed(e)).await;
                return;
            }
        };
        let item = match f {
            DiskFrame::Batch {
                seq,
                ops,
                raw_len,
                compressed,
                blob,
            } => Incoming::Batch {
                wire,
                blob_wire: blob.len() as u64,
                task: tokio::spawn(prepare(
                    seq,
                    ops,
                    raw_len,
                    compressed,
                    blob,
                    site.clone(),
                    size,
                )),
            },
            DiskFrame::Flush { seq } => Incoming::Flush { wire, seq },
            DiskFrame::End => Incoming::End { wire },
            DiskFrame::Pulled(blocks) => {
                if pulled.send((blocks, wire)).await.is_err() {
                    return;
                }
                continue;
            }
            other => Incoming::Failed(AgentError::Peer(format!("unexpected frame {other:?}"))),
        };
        if ended {
            // Nothing but pull answers may follow End.
            return;
        }
        ended = matches!(item, Incoming::End { .. });
        let failed = matches!(item, Incoming::Failed(_));
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// Check a batch's ranges, decompress it, check its literal blocks and
/// fetch its blocks sent by id from the site (those it has).
async fn prepare(
    seq: u64,
    ops: Vec<DiskOp>,
    raw_len: u32,
    compressed: bool,
    blob: Bytes,
    site: Option<ChunkClient>,
    size: u64,
) -> Result<Prepared> {
    if let Some(op) = ops
        .iter()
        .find(|op| op.offset().checked_add(op.len()).is_none_or(|e| e > size))
    {
        return Err(AgentError::Range(format!(
            "sender wrote {} bytes at {} beyond the destination's {size} bytes",
            op.len(),
            op.offset()
        )));
    }
    let ops = Arc::new(ops);
    let ops2 = ops.clone();
    let (blob, literal) =
        tokio::task::spawn_blocking(move || -> Result<(Bytes, Vec<(ChunkId, Bytes)>)> {
            let blob = if compressed {
                let raw = zstd::bulk::decompress(&blob, raw_len as usize)
                    .map_err(|e| AgentError::Peer(format!("batch does not decompress: {e}")))?;
                Bytes::from(raw)
            } else {
                blob
            };
            if blob.len() != raw_len as usize {
                return Err(AgentError::Peer(format!(
                    "batch blob holds {} bytes, ops need {raw_len}",
                    blob.len()
                )));
            }
            let mut at = 0usize;
            let mut literal = Vec::new();
            for op in ops2.iter() {
                let n = op.blob_len();
                if let DiskOp::Block { id, .. } = op {
                    let data = blob.slice(at..at + n);
                    if ChunkId::of(&data) != *id {
                        return Err(AgentError::BadContent(Unit::Block, *id));
                    }
                    literal.push((*id, data));
                }
                at += n;
            }
            Ok((blob, literal))
        })
        .await
        .map_err(|e| AgentError::Internal(format!("batch check task: {e}")))??;

    let ids: Vec<ChunkId> = ops
        .iter()
        .filter_map(|op| match *op {
            DiskOp::Site { id, .. } | DiskOp::Group { id, .. } => Some(id),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let fetched = match (&site, ids.first()) {
        (_, None) => HashMap::new(),
        (Some(site), Some(_)) => site.get_many(&ids).await?,
        (None, Some(id)) => return Err(AgentError::Unknown(Unit::Block, *id)),
    };
    let ops = Arc::try_unwrap(ops).unwrap_or_else(|a| (*a).clone());
    Ok(Prepared {
        seq,
        ops,
        blob,
        compressed,
        literal,
        fetched,
    })
}

/// The writing side: the WAN's write half and pull answers.
struct Back {
    wr: WanWriter,
    pulled: mpsc::Receiver<(PulledBlocks, u64)>,
}

impl Back {
    /// Ask the sender for blocks and wait for its answer.
    async fn pull(&mut self, ids: Vec<ChunkId>) -> Result<(PulledBlocks, u64)> {
        let wire = write_frame(&mut self.wr, &DiskFrame::Pull(ids)).await?;
        let (blocks, n) = self.pulled.recv().await.ok_or_else(|| {
            AgentError::Peer("sender connection lost while pulling blocks".into())
        })?;
        Ok((blocks, wire + n))
    }
}

/// Receive one disk migration from `wan` into `nbd`. On failure the
/// sender is told why (best effort) before the error returns.
pub async fn receive_disk(
    wan: WanStream,
    nbd: NbdClient,
    opts: DiskRecvOptions,
) -> Result<DiskReport> {
    let start = Instant::now();
    let _ = wan.set_nodelay(true);
    let (rd, wr) = wan.split();
    let rd = BufReader::new(rd);
    let (pulled_tx, pulled_rx) = mpsc::channel(4);
    let mut session = RecvSession::new(wr, pulled_rx, nbd, opts);
    let result = session.run(rd, pulled_tx).await;
    if let Some(r) = session.reader.take() {
        r.abort();
    }
    session.report.seconds = start.elapsed().as_secs_f64();
    session.finish(result).await
}

/// One disk migration being received: the WAN's write half, the
/// destination export, the site store in flight and the report.
struct RecvSession {
    back: Back,
    dest: DestWriter,
    report: DiskReport,
    /// The site store in flight, at most one (backpressure on a slow site).
    store: Option<tokio::task::JoinHandle<Result<u64>>>,
    opts: Arc<DiskRecvOptions>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl RecvSession {
    fn new(
        wr: WanWriter,
        pulled: mpsc::Receiver<(PulledBlocks, u64)>,
        nbd: NbdClient,
        opts: DiskRecvOptions,
    ) -> RecvSession {
        let report = DiskReport {
            detail: DiskDetail {
                role: "recv".into(),
                disk_size: nbd.size(),
                ..Default::default()
            },
            ..Default::default()
        };
        RecvSession {
            back: Back { wr, pulled },
            dest: DestWriter {
                nbd,
                inflight: VecDeque::new(),
            },
            report,
            store: None,
            opts: Arc::new(opts),
            reader: None,
        }
    }

    /// The handshake, then every batch and flush in WAN order until the
    /// sender's end.
    async fn run(
        &mut self,
        mut rd: BufReader<WanReader>,
        pulled_tx: mpsc::Sender<(PulledBlocks, u64)>,
    ) -> Result<()> {
        self.handshake(&mut rd).await?;
        let (tx, mut rx) = mpsc::channel(READ_AHEAD);
        self.reader = Some(tokio::spawn(read_ahead(
            rd,
            tx,
            pulled_tx,
            self.opts.site.clone(),
            self.report.detail.disk_size,
        )));
        loop {
            let item = rx
                .recv()
                .await
                .ok_or_else(|| AgentError::Internal("WAN reader stopped".into()))?;
            match item {
                Incoming::Batch {
                    wire,
                    blob_wire,
                    task,
                } => self.batch(wire, blob_wire, task).await?,
                Incoming::Flush { wire, seq } => {
                    self.report.wan.total += wire;
                    self.dest.flush().await?;
                    self.report.detail.flushes += 1;
                    write_frame(&mut self.back.wr, &DiskFrame::Flushed { seq }).await?;
                }
                Incoming::End { wire } => {
                    self.report.wan.total += wire;
                    self.dest.flush().await?;
                    if let Some(t) = self.store.take() {
                        self.report.detail.site_stored += join_store(t).await?;
                    }
                    return Ok(());
                }
                Incoming::Failed(e) => return Err(e),
            }
        }
    }

    /// Take the sender's Hello (its protocol must be ours) and answer with
    /// the destination's size.
    async fn handshake(&mut self, rd: &mut BufReader<WanReader>) -> Result<()> {
        let (hello, n) = read_frame(rd).await?;
        self.report.wan.framing += n;
        self.report.wan.total += n;
        match hello {
            DiskFrame::Hello {
                protocol,
                vm,
                group,
            } => {
                if protocol != DISK_PROTOCOL {
                    return Err(AgentError::Unsupported(format!(
                        "sender speaks disk protocol {protocol}, this receiver {DISK_PROTOCOL}"
                    )));
                }
                self.report.vm = vm;
                self.report.group = group;
            }
            other => return Err(AgentError::Peer(format!("expected Hello, got {other:?}"))),
        }
        write_frame(
            &mut self.back.wr,
            &DiskFrame::Welcome {
                protocol: DISK_PROTOCOL,
                size: self.report.detail.disk_size,
            },
        )
        .await?;
        Ok(())
    }

    /// Write one batch once prepared, tell the sender when its group
    /// blocks may go, and store its literal blocks at the site.
    async fn batch(
        &mut self,
        wire: u64,
        blob_wire: u64,
        task: tokio::task::JoinHandle<Result<Prepared>>,
    ) -> Result<()> {
        let report = &mut self.report;
        report.wan.total += wire;
        let p = task
            .await
            .map_err(|e| AgentError::Internal(format!("batch task: {e}")))??;
        if p.compressed {
            report.wan.compressed += blob_wire;
        } else {
            // Whole blocks as raw, unaligned bytes as literal.
            for op in &p.ops {
                match op {
                    DiskOp::Block { .. } => report.wan.raw += op.blob_len() as u64,
                    DiskOp::Bytes { .. } => report.wan.literal += op.blob_len() as u64,
                    _ => {}
                }
            }
        }
        let seq = p.seq;
        let pullable = p.ops.iter().any(|o| matches!(o, DiskOp::Group { .. }));
        let stored = apply_batch(&mut self.dest, &mut self.back, &self.opts, report, p).await?;
        if pullable {
            // The sender may now forget this batch's group blocks.
            let n = write_frame(&mut self.back.wr, &DiskFrame::Applied { seq }).await?;
            report.wan.framing += n;
        }
        if !stored.is_empty() {
            // One store in flight at a time: backpressure on a slow site.
            if let Some(t) = self.store.take() {
                report.detail.site_stored += join_store(t).await?;
            }
            let site = self.opts.site.clone();
            self.store = site.map(|s| tokio::spawn(async move { Ok(s.put_many(&stored).await?) }));
        }
        Ok(())
    }

    /// Tell the sender how it ended; on success also leave the export.
    async fn finish(mut self, result: Result<()>) -> Result<DiskReport> {
        match result {
            Ok(()) => {
                self.report.detail.completed = true;
                write_frame(
                    &mut self.back.wr,
                    &DiskFrame::Done {
                        ok: true,
                        message: String::new(),
                    },
                )
                .await?;
                let _ = self.dest.nbd.disconnect().await;
                Ok(self.report)
            }
            Err(e) => {
                let _ = write_frame(
                    &mut self.back.wr,
                    &DiskFrame::Done {
                        ok: false,
                        message: e.to_string(),
                    },
                )
                .await;
                Err(e)
            }
        }
    }
}

async fn join_store(t: tokio::task::JoinHandle<Result<u64>>) -> Result<u64> {
    t.await
        .map_err(|e| AgentError::Internal(format!("site store task: {e}")))?
}

/// Resolve what the site lacked, and write one prepared batch; returns the
/// blocks to store at the site.
async fn apply_batch(
    dest: &mut DestWriter,
    back: &mut Back,
    opts: &DiskRecvOptions,
    report: &mut DiskReport,
    p: Prepared,
) -> Result<Vec<(ChunkId, Bytes)>> {
    let Prepared {
        ops,
        blob,
        compressed,
        mut literal,
        fetched,
        ..
    } = p;
    let mut pulled = Vec::new();
    let by_id = resolve(back, opts, report, &ops, fetched, &mut pulled).await?;

    let mut at = 0usize;
    let mut run: Option<(u64, BytesMut)> = None;
    for op in &ops {
        let (offset, data): (u64, Bytes) = match *op {
            DiskOp::Zero { offset, len } => {
                if let Some((o, buf)) = run.take() {
                    dest.write(o, &buf).await?;
                }
                report.detail.blocks.zero += (len as u64).div_ceil(BLOCK as u64);
                report.detail.bytes_written += len as u64;
                dest.zero(offset, len).await?;
                continue;
            }
            DiskOp::Site { offset, id } | DiskOp::Group { offset, id } => {
                if matches!(op, DiskOp::Site { .. }) {
                    report.detail.blocks.by_hash += 1;
                } else {
                    report.detail.blocks.claimed_by_other += 1;
                }
                report.wan.by_hash += 41;
                let data = by_id
                    .get(&id)
                    .cloned()
                    .ok_or(AgentError::Unknown(Unit::Block, id))?;
                (offset, data)
            }
            DiskOp::Block { offset, .. } | DiskOp::Bytes { offset, .. } => {
                let n = op.blob_len();
                let data = blob.slice(at..at + n);
                at += n;
                if matches!(op, DiskOp::Block { .. }) {
                    if compressed {
                        report.detail.blocks.literal_compressed += 1;
                    } else {
                        report.detail.blocks.literal_raw += 1;
                    }
                } else {
                    report.detail.blocks.unaligned_bytes += n as u64;
                }
                (offset, data)
            }
        };
        report.detail.bytes_written += data.len() as u64;
        match &mut run {
            Some((o, buf)) if *o + buf.len() as u64 == offset && buf.len() < RUN_BYTES => {
                buf.extend_from_slice(&data);
            }
            _ => {
                if let Some((o, buf)) = run.take() {
                    dest.write(o, &buf).await?;
                }
                let mut buf = BytesMut::with_capacity(RUN_BYTES);
                buf.extend_from_slice(&data);
                run = Some((offset, buf));
            }
        }
    }
    if let Some((o, buf)) = run.take() {
        dest.write(o, &buf).await?;
    }
    literal.extend(pulled);
    Ok(if opts.store_blocks {
        literal
    } else {
        Vec::new()
    })
}

/// Complete the blocks sent by id: every site block must have been
/// fetched; group blocks may still be on their way (another receiver
/// stores them): wait for them, bounded, then pull the rest from the sender.
async fn resolve(
    back: &mut Back,
    opts: &DiskRecvOptions,
    report: &mut DiskReport,
    ops: &[DiskOp],
    mut got: HashMap<ChunkId, Bytes>,
    newly_pulled: &mut Vec<(ChunkId, Bytes)>,
) -> Result<HashMap<ChunkId, Bytes>> {
    let mut group_ids = HashSet::new();
    for op in ops {
        match *op {
            DiskOp::Site { id, .. } if !got.contains_key(&id) => {
                return Err(AgentError::Unknown(Unit::Block, id));
            }
            DiskOp::Group { id, .. } => {
                group_ids.insert(id);
            }
            _ => {}
        }
    }
    let Some(site) = &opts.site else {
        // prepare() refused ids without a site already.
        return Ok(got);
    };
    let mut pulled = 0u64;
    let deadline = Instant::now() + opts.wait;
    loop {
        let missing: Vec<ChunkId> = group_ids
            .iter()
            .filter(|i| !got.contains_key(i))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let (blocks, wire) = back.pull(missing.clone()).await?;
            report.wan.pulled += wire;
            report.wan.total += wire;
            for (id, data) in blocks {
                let Some(data) = data else { continue };
                if !missing.contains(&id) {
                    continue;
                }
                let d2 = data.clone();
                let ok = tokio::task::spawn_blocking(move || ChunkId::of(&d2) == id)
                    .await
                    .map_err(|e| AgentError::Internal(format!("hash task: {e}")))?;
                if !ok {
                    return Err(AgentError::BadContent(Unit::Block, id));
                }
                pulled += 1;
                // Its claimant never stored it: store it for the group.
                newly_pulled.push((id, data.clone()));
                got.insert(id, data);
            }
            if let Some(id) = missing.iter().find(|i| !got.contains_key(i)) {
                return Err(AgentError::Unknown(Unit::Block, *id));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        got.extend(site.get_many(&missing).await?);
    }
    report.detail.blocks.pulled += pulled;
    report.detail.site_fetched += got.len() as u64 - pulled;
    Ok(got)
}
