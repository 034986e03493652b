//! `migrate disk-recv`: takes the batches of `migrate disk-send` off the
//! WAN and writes them into the destination QEMU's NBD export.
//!
//! Blocks sent by id come from the destination site (one batched `?get`
//! per batch, every block checked against its id by the client); a block
//! another sender of the group claimed may still be on its way there, so
//! those get a short, bounded wait; an id nobody can resolve fails the
//! migration loudly, never becomes zeros. Literal blocks are checked
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
            wait: Duration::from_secs(5),
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
    let (rd, mut wr) = wan.into_split();
    let mut rd = BufReader::new(rd);
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
        let (hello, n) = read_frame(&mut rd).await?;
        report.wan.framing += n;
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
            &mut wr,
            &DiskFrame::Welcome {
                protocol: DISK_PROTOCOL,
                size: report.disk_size,
            },
        )
        .await?;
        loop {
            let (f, n) = read_frame(&mut rd).await.map_err(|e| {
                DiskError::Peer(format!("sender connection lost before the end: {e}"))
            })?;
            report.wan.total += n;
            match f {
                DiskFrame::Batch {
                    ops,
                    raw_len,
                    compressed,
                    blob,
                    ..
                } => {
                    if compressed {
                        report.wan.literal_compressed += blob.len() as u64;
                    } else {
                        report.wan.literal_raw += blob.len() as u64;
                    }
                    let stored = apply_batch(
                        &mut dest,
                        &opts,
                        &mut report,
                        ops,
                        raw_len,
                        compressed,
                        blob,
                    )
                    .await?;
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
                    write_frame(&mut wr, &DiskFrame::Flushed { seq }).await?;
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
                &mut wr,
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
                &mut wr,
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
async fn apply_batch(
    dest: &mut DestWriter,
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

    let by_id = resolve(opts, report, &ops).await?;

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
    Ok(if opts.store_blocks {
        literal
    } else {
        Vec::new()
    })
}

/// Fetch the blocks sent by id from the site. Group blocks may still be
/// on their way (another receiver stores them): wait for them, bounded.
async fn resolve(
    opts: &DiskRecvOptions,
    report: &mut DiskReport,
    ops: &[DiskOp],
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
            return Err(DiskError::UnknownBlock(missing[0]));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        got.extend(site.get_many(&missing).await?);
    }
    report.site_fetched += got.len() as u64;
    Ok(got)
}
