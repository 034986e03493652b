//! `migrate disk-recv`: takes the batches of `migrate disk-send` off the
//! WAN and writes them into the destination QEMU's NBD export.
//!
//! Blocks sent by id come from the destination site (one batched `?get`
//! per batch, every block checked against its id by the client); a block
//! another sender of the group claimed may still be on its way there, so
//! those get a short, bounded wait, then are pulled from the sender; an id
//! nobody can resolve fails the migration loudly, never becomes zeros. Literal blocks are checked
//! against the id the sender computed, then stored at the site in batches
//! so other VMs of the group, and later migrations, can use them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::BufReader;
use tokio::net::TcpStream;

use super::disk_error::{DiskError, Result};
use super::disk_report::DiskReport;
use super::disk_wire::{read_frame, write_frame, DiskFrame, DiskOp, BLOCK, DISK_PROTOCOL};
use crate::distribute::ChunkClient;
use crate::image::nbd_client::{NbdClient, Reply, MAX_WRITE};
use crate::store::ChunkId;

/// NBD requests in flight to the destination export.
const INFLIGHT: usize = 64;
/// Contiguous data is written in requests up to this size.
const RUN_BYTES: usize = 1 << 20;
/// Frames read ahead while waiting for a pull answer, at most.
const BACKLOG_BYTES: u64 = 256 << 20;

/// The WAN connection, with frames read ahead while waiting for `Pulled`.
struct Wan {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    backlog: VecDeque<(DiskFrame, u64)>,
    backlog_bytes: u64,
}

type PulledBlocks = Vec<(ChunkId, Option<Bytes>)>;

impl Wan {
    async fn next(&mut self) -> Result<(DiskFrame, u64)> {
        if let Some((f, n)) = self.backlog.pop_front() {
            self.backlog_bytes -= n;
            return Ok((f, n));
        }
        Ok(read_frame(&mut self.rd).await?)
    }

    /// Ask the sender for blocks; other frames arriving meanwhile wait.
    async fn pull(&mut self, ids: Vec<ChunkId>) -> Result<(PulledBlocks, u64)> {
        let wire = write_frame(&mut self.wr, &DiskFrame::Pull(ids)).await?;
        loop {
            let (f, n) = read_frame(&mut self.rd).await?;
            if let DiskFrame::Pulled(blocks) = f {
                return Ok((blocks, wire + n));
            }
            self.backlog_bytes += n;
            if self.backlog_bytes > BACKLOG_BYTES {
                return Err(DiskError::Peer(
                    "sender kept streaming without answering a pull".into(),
                ));
            }
            self.backlog.push_back((f, n));
        }
    }
}

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

/// Receive one disk migration from `wan` into `nbd`. On failure the
/// sender is told why (best effort) before the error returns.
pub async fn receive_disk(
    wan: TcpStream,
    nbd: NbdClient,
    opts: DiskRecvOptions,
) -> Result<DiskReport> {
    let start = Instant::now();
    let _ = wan.set_nodelay(true);
    let (rd, wr) = wan.into_split();
    let mut wan = Wan {
        rd: BufReader::new(rd),
        wr,
        backlog: VecDeque::new(),
        backlog_bytes: 0,
    };
    let mut report = DiskReport {
        role: "recv".into(),
        disk_size: nbd.size(),
        ..Default::default()
    };
    let mut dest = DestWriter {
        nbd,
        inflight: VecDeque::new(),
    };
    let mut store: Option<tokio::task::JoinHandle<Result<u64>>> = None;
    let opts = Arc::new(opts);

    let result: Result<()> = async {
        let (hello, n) = wan.next().await?;
        report.wan.framing += n;
        report.wan.total += n;
        match hello {
            DiskFrame::Hello {
                protocol,
                vm,
                group,
            } => {
                if protocol != DISK_PROTOCOL {
                    return Err(DiskError::Unsupported(format!(
                        "sender speaks disk protocol {protocol}, this receiver {DISK_PROTOCOL}"
                    )));
                }
                report.vm = vm;
                report.group = group;
            }
            other => return Err(DiskError::Peer(format!("expected Hello, got {other:?}"))),
        }
        write_frame(
            &mut wan.wr,
            &DiskFrame::Welcome {
                protocol: DISK_PROTOCOL,
                size: report.disk_size,
            },
        )
        .await?;
        loop {
            let (f, n) = wan.next().await.map_err(|e| {
                DiskError::Peer(format!("sender connection lost before the end: {e}"))
            })?;
            report.wan.total += n;
            match f {
                DiskFrame::Batch {
                    seq,
                    ops,
                    raw_len,
                    compressed,
                    blob,
                } => {
                    let pullable = ops.iter().any(|o| matches!(o, DiskOp::Group { .. }));
                    if compressed {
                        report.wan.literal_compressed += blob.len() as u64;
                    } else {
                        report.wan.literal_raw += blob.len() as u64;
                    }
                    let stored = apply_batch(
                        &mut dest,
                        &mut wan,
                        &opts,
                        &mut report,
                        ops,
                        raw_len,
                        compressed,
                        blob,
                    )
                    .await?;
                    if pullable {
                        // The sender may now forget this batch's group blocks.
                        let n = write_frame(&mut wan.wr, &DiskFrame::Applied { seq }).await?;
                        report.wan.framing += n;
                    }
                    if !stored.is_empty() {
                        // One store in flight at a time: backpressure on a slow site.
                        if let Some(t) = store.take() {
                            report.site_stored += join_store(t).await?;
                        }
                        let site = opts.site.clone();
                        store = site
                            .map(|s| tokio::spawn(async move { Ok(s.put_many(&stored).await?) }));
                    }
                }
                DiskFrame::Flush { seq } => {
                    dest.flush().await?;
                    report.flushes += 1;
                    write_frame(&mut wan.wr, &DiskFrame::Flushed { seq }).await?;
                }
                DiskFrame::End => {
                    dest.flush().await?;
                    if let Some(t) = store.take() {
                        report.site_stored += join_store(t).await?;
                    }
                    return Ok(());
                }
                other => {
                    return Err(DiskError::Peer(format!("unexpected frame {other:?}")));
                }
            }
        }
    }
    .await;
    report.seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            report.completed = true;
            write_frame(
                &mut wan.wr,
                &DiskFrame::Done {
                    ok: true,
                    message: String::new(),
                },
            )
            .await?;
            let _ = dest.nbd.disconnect().await;
            Ok(report)
        }
        Err(e) => {
            let _ = write_frame(
                &mut wan.wr,
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

async fn join_store(t: tokio::task::JoinHandle<Result<u64>>) -> Result<u64> {
    t.await
        .map_err(|e| DiskError::Internal(format!("site store task: {e}")))?
}

/// Resolve, check and write one batch; returns the literal blocks to store.
#[allow(clippy::too_many_arguments)]
async fn apply_batch(
    dest: &mut DestWriter,
    wan: &mut Wan,
    opts: &DiskRecvOptions,
    report: &mut DiskReport,
    ops: Vec<DiskOp>,
    raw_len: u32,
    compressed: bool,
    blob: Bytes,
) -> Result<Vec<(ChunkId, Bytes)>> {
    let size = report.disk_size;
    if let Some(op) = ops
        .iter()
        .find(|op| op.offset().checked_add(op.len()).is_none_or(|e| e > size))
    {
        return Err(DiskError::Range(format!(
            "sender wrote {} bytes at {} beyond the destination's {size} bytes",
            op.len(),
            op.offset()
        )));
    }
    // Decompress and check literal blocks off the reactor.
    let ops = Arc::new(ops);
    let ops2 = ops.clone();
    let (blob, literal) =
        tokio::task::spawn_blocking(move || -> Result<(Bytes, Vec<(ChunkId, Bytes)>)> {
            let blob = if compressed {
                let raw = zstd::bulk::decompress(&blob, raw_len as usize)
                    .map_err(|e| DiskError::Peer(format!("batch does not decompress: {e}")))?;
                Bytes::from(raw)
            } else {
                blob
            };
            if blob.len() != raw_len as usize {
                return Err(DiskError::Peer(format!(
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
                        return Err(DiskError::BadBlock(*id));
                    }
                    literal.push((*id, data));
                }
                at += n;
            }
            Ok((blob, literal))
        })
        .await
        .map_err(|e| DiskError::Internal(format!("batch check task: {e}")))??;

    let mut pulled = Vec::new();
    let by_id = resolve(wan, opts, report, &ops, &mut pulled).await?;

    let mut at = 0usize;
    let mut run: Option<(u64, BytesMut)> = None;
    for op in ops.iter() {
        let (offset, data): (u64, Bytes) = match *op {
            DiskOp::Zero { offset, len } => {
                if let Some((o, buf)) = run.take() {
                    dest.write(o, &buf).await?;
                }
                report.blocks.zero += (len as u64).div_ceil(BLOCK as u64);
                report.bytes_written += len as u64;
                dest.zero(offset, len).await?;
                continue;
            }
            DiskOp::Site { offset, id } | DiskOp::Group { offset, id } => {
                if matches!(op, DiskOp::Site { .. }) {
                    report.blocks.by_hash += 1;
                } else {
                    report.blocks.claimed_by_other += 1;
                }
                report.wan.by_hash += 41;
                let data = by_id.get(&id).cloned().ok_or(DiskError::UnknownBlock(id))?;
                (offset, data)
            }
            DiskOp::Block { offset, .. } | DiskOp::Bytes { offset, .. } => {
                let n = op.blob_len();
                let data = blob.slice(at..at + n);
                at += n;
                if matches!(op, DiskOp::Block { .. }) {
                    if compressed {
                        report.blocks.literal_compressed += 1;
                    } else {
                        report.blocks.literal_raw += 1;
                    }
                } else {
                    report.blocks.unaligned_bytes += n as u64;
                }
                (offset, data)
            }
        };
        report.bytes_written += data.len() as u64;
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
    let mut literal = literal;
    literal.extend(pulled);
    Ok(if opts.store_blocks {
        literal
    } else {
        Vec::new()
    })
}

/// Fetch the blocks sent by id from the site. Group blocks may still be
/// on their way (another receiver stores them): wait for them, bounded,
/// then pull the rest from the sender.
async fn resolve(
    wan: &mut Wan,
    opts: &DiskRecvOptions,
    report: &mut DiskReport,
    ops: &[DiskOp],
    newly_pulled: &mut Vec<(ChunkId, Bytes)>,
) -> Result<HashMap<ChunkId, Bytes>> {
    let mut site_ids = HashSet::new();
    let mut group_ids = HashSet::new();
    for op in ops {
        match *op {
            DiskOp::Site { id, .. } => {
                site_ids.insert(id);
            }
            DiskOp::Group { id, .. } => {
                group_ids.insert(id);
            }
            _ => {}
        }
    }
    if site_ids.is_empty() && group_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let Some(site) = &opts.site else {
        let id = site_ids.iter().chain(group_ids.iter()).next().copied();
        return Err(id.map_or_else(
            || DiskError::Internal("no id".into()),
            DiskError::UnknownBlock,
        ));
    };
    let mut pulled = 0u64;
    let ids: Vec<ChunkId> = site_ids.union(&group_ids).copied().collect();
    let mut got = site.get_many(&ids).await?;
    if let Some(missing) = site_ids.iter().find(|i| !got.contains_key(i)) {
        return Err(DiskError::UnknownBlock(*missing));
    }
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
            let (blocks, wire) = wan.pull(missing.clone()).await?;
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
                    .map_err(|e| DiskError::Internal(format!("hash task: {e}")))?;
                if !ok {
                    return Err(DiskError::BadBlock(id));
                }
                pulled += 1;
                // Its claimant never stored it: store it for the group.
                newly_pulled.push((id, data.clone()));
                got.insert(id, data);
            }
            if let Some(id) = missing.iter().find(|i| !got.contains_key(i)) {
                return Err(DiskError::UnknownBlock(*id));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        got.extend(site.get_many(&missing).await?);
    }
    report.blocks.pulled += pulled;
    report.site_fetched += got.len() as u64 - pulled;
    Ok(got)
}
