//! `migrate disk-send`: a writable NBD export that QEMU's mirror job writes
//! into on the source host, forwarding every write over the WAN to
//! `migrate disk-recv` so that each 4 KiB block the destination site already
//! holds (or another sender of the group claimed) crosses as its id only.
//!
//! Pipeline: NBD writes are queued in the client's order (acknowledged at
//! once: NBD allows that because FLUSH is honoured end to end), cut into
//! batches, hashed off the reactor, looked up at the destination site in a
//! window of batches in flight, compressed, and written to the WAN in
//! order. A FLUSH is answered only when the receiver reports everything
//! before it written and flushed into the destination export. Once the WAN
//! fails, every later write and flush fails, so QEMU's job fails with an
//! I/O error and the source guest keeps running.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use crate::migrate::link::WanStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::report::{DiskDetail, DiskReport};
use super::wire::{read_frame, write_frame, DiskFrame, DiskOp, BLOCK, DISK_PROTOCOL};
use crate::image::nbd::{serve_conn, BlockSource, Exports};
use crate::migrate::error::{AgentError, Result};
use crate::store::ChunkId;
use chunk_api::ChunkClient;

mod wan;
use wan::{wan_reader, wan_writer};

/// NBD writes queued ahead of the batcher (backpressure on QEMU beyond it).
const QUEUE_ITEMS: usize = 64;
/// Bytes of one id line in a site query (64 hex digits and a newline).
const ID_LINE: u64 = 65;

pub struct DiskSendOptions {
    pub vm: String,
    pub group: Option<String>,
    pub site: Option<ChunkClient>,
    /// Look blocks up at the site (off: literal blocks only).
    pub dedup: bool,
    pub zstd_level: Option<i32>,
    /// Blocks per batch (one site query and one blob each).
    pub batch_blocks: usize,
    /// Batches being prepared (hashed, looked up, compressed) at once.
    pub window: usize,
    /// How long to wait for QEMU to connect to the NBD export.
    pub accept_timeout: Duration,
}

impl DiskSendOptions {
    pub fn new(vm: &str) -> DiskSendOptions {
        DiskSendOptions {
            vm: vm.to_string(),
            group: None,
            site: None,
            dedup: true,
            zstd_level: Some(3),
            batch_blocks: 512,
            window: 4,
            accept_timeout: Duration::from_secs(600),
        }
    }
}

enum Item {
    Write { offset: u64, data: Bytes },
    Zero { offset: u64, len: u32 },
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Blocks sent as claimed by another sender, kept until the receiver
/// applied their batch, in case it must pull them (the claimant died).
#[derive(Default)]
struct Pullable {
    blocks: HashMap<ChunkId, (Bytes, u32)>,
    by_seq: std::collections::VecDeque<(u64, Vec<ChunkId>)>,
}

impl Pullable {
    fn keep(&mut self, seq: u64, blocks: Vec<(ChunkId, Bytes)>) {
        if blocks.is_empty() {
            return;
        }
        let ids = blocks.iter().map(|(id, _)| *id).collect();
        for (id, data) in blocks {
            self.blocks.entry(id).or_insert((data, 0)).1 += 1;
        }
        self.by_seq.push_back((seq, ids));
    }
    fn release_through(&mut self, seq: u64) {
        while self.by_seq.front().is_some_and(|(s, _)| *s <= seq) {
            let Some((_, ids)) = self.by_seq.pop_front() else {
                break;
            };
            for id in ids {
                if let Some(e) = self.blocks.get_mut(&id) {
                    e.1 -= 1;
                    if e.1 == 0 {
                        self.blocks.remove(&id);
                    }
                }
            }
        }
    }
}

type SharedPullable = Arc<Mutex<Pullable>>;

/// Flushes sent to the receiver, by sequence number, awaiting `Flushed`.
type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>>;

/// The first failure of the pipeline; every later NBD request reports it.
#[derive(Clone)]
struct Failure {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl Failure {
    fn new() -> Failure {
        Failure {
            tx: Arc::new(watch::channel(None).0),
        }
    }
    fn set(&self, why: impl Into<String>) {
        let why = why.into();
        self.tx.send_if_modified(|cur| {
            if cur.is_none() {
                tracing::error!("disk migration failed: {why}");
                *cur = Some(why);
                true
            } else {
                false
            }
        });
    }
    fn get(&self) -> Option<String> {
        self.tx.borrow().clone()
    }
    async fn wait(&self) -> String {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(w) = rx.borrow_and_update().clone() {
                return w;
            }
            if rx.changed().await.is_err() {
                return "pipeline stopped".into();
            }
        }
    }
}

/// The export QEMU's mirror writes into.
struct SendExport {
    size: u64,
    tx: Mutex<Option<mpsc::Sender<Item>>>,
    failed: Failure,
}

impl SendExport {
    async fn push(&self, item: Item) -> std::io::Result<()> {
        if let Some(why) = self.failed.get() {
            return Err(std::io::Error::other(why));
        }
        let tx = self.tx.lock().clone();
        let Some(tx) = tx else {
            return Err(std::io::Error::other("export closed"));
        };
        tx.send(item)
            .await
            .map_err(|_| std::io::Error::other("disk migration pipeline stopped"))
    }
}

#[async_trait]
impl BlockSource for SendExport {
    fn size(&self) -> u64 {
        self.size
    }
    async fn read_at(&self, _offset: u64, _len: u32) -> std::io::Result<Bytes> {
        // The data lives at the destination; a mirror target is never read.
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "disk-send export is write-only",
        ))
    }
    fn writable(&self) -> bool {
        true
    }
    async fn write_at(&self, offset: u64, data: Bytes) -> std::io::Result<()> {
        self.push(Item::Write { offset, data }).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> std::io::Result<()> {
        self.push(Item::Zero { offset, len }).await
    }
    async fn trim(&self, offset: u64, len: u32) -> std::io::Result<()> {
        // A mirror trims ranges that read as zeros at the source; zeroing
        // them keeps the destination identical whatever its discard does.
        self.push(Item::Zero { offset, len }).await
    }
    async fn flush(&self) -> std::io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.push(Item::Flush(done)).await?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(std::io::Error::other(why)),
            Err(_) => Err(std::io::Error::other(
                "disk migration pipeline stopped before the flush",
            )),
        }
    }
}

/// One piece of a batch before the site lookup.
enum Draft {
    Zero { offset: u64, len: u32 },
    Block { offset: u64, id: ChunkId },
    Bytes { offset: u64, len: u32 },
}

/// A batch ready for the WAN.
struct Prepared {
    frame: Bytes,
    report: DiskReport,
}

enum Queued {
    Batch(tokio::task::JoinHandle<Result<Prepared>>),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// A sender connected to its receiver, before QEMU connects.
pub struct DiskSender {
    wan: WanStream,
    size: u64,
    opts: DiskSendOptions,
}

impl DiskSender {
    /// Greet the receiver and learn the destination export's size.
    pub async fn connect(mut wan: WanStream, opts: DiskSendOptions) -> Result<DiskSender> {
        crate::migrate::proto::check_string("the VM name", &opts.vm)
            .map_err(AgentError::Unsupported)?;
        wan.set_nodelay(true)
            .map_err(|e| AgentError::io("WAN socket", e))?;
        write_frame(
            &mut wan,
            &DiskFrame::Hello {
                protocol: DISK_PROTOCOL,
                vm: opts.vm.clone(),
                group: opts.group.clone(),
            },
        )
        .await?;
        let (f, _) = read_frame(&mut wan).await?;
        let size = match f {
            DiskFrame::Welcome { protocol, size } if protocol == DISK_PROTOCOL => size,
            DiskFrame::Welcome { protocol, .. } => {
                return Err(AgentError::Unsupported(format!(
                    "receiver speaks disk protocol {protocol}, this sender {DISK_PROTOCOL}"
                )))
            }
            DiskFrame::Done { message, .. } => return Err(AgentError::Peer(message)),
            other => return Err(AgentError::Peer(format!("unexpected {other:?}"))),
        };
        Ok(DiskSender { wan, size, opts })
    }

    /// The destination export's size, which the NBD export advertises.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Serve one NBD client (QEMU's mirror target) on `listener` as export
    /// `name`; when it disconnects, finish the migration with the receiver.
    pub async fn serve(self, listener: TcpListener, name: &str) -> Result<DiskReport> {
        let start = Instant::now();
        let DiskSender { wan, size, opts } = self;
        let opts = Arc::new(opts);
        let failed = Failure::new();
        let report = Arc::new(Mutex::new(DiskReport {
            vm: opts.vm.clone(),
            group: opts.group.clone(),
            detail: DiskDetail {
                role: "send".into(),
                disk_size: size,
                ..Default::default()
            },
            ..Default::default()
        }));
        let (item_tx, item_rx) = mpsc::channel(QUEUE_ITEMS);
        let export = Arc::new(SendExport {
            size,
            tx: Mutex::new(Some(item_tx)),
            failed: failed.clone(),
        });
        let (queue_tx, queue_rx) = mpsc::channel(opts.window.max(1));
        let waiters: Waiters = Arc::default();
        let (rd, wr) = wan.split();
        let pullable = SharedPullable::default();
        let (pull_tx, pull_rx) = mpsc::channel(16);
        let batcher = tokio::spawn(batcher(
            item_rx,
            queue_tx,
            opts.clone(),
            report.clone(),
            pullable.clone(),
        ));
        let writer = tokio::spawn(wan_writer(
            wr,
            queue_rx,
            pull_rx,
            waiters.clone(),
            failed.clone(),
            report.clone(),
        ));
        let reader = tokio::spawn(wan_reader(
            rd,
            waiters.clone(),
            failed.clone(),
            pullable,
            pull_tx,
        ));

        let served = async {
            let (conn, peer) = tokio::time::timeout(opts.accept_timeout, listener.accept())
                .await
                .map_err(|_| {
                    AgentError::Peer(format!(
                        "no NBD client connected within {:?}",
                        opts.accept_timeout
                    ))
                })?
                .map_err(|e| AgentError::io("accepting the NBD client", e))?;
            drop(listener);
            tracing::info!("NBD client connected from {peer}");
            let _ = conn.set_nodelay(true);
            let mut exports = Exports::default();
            exports.add(name, export.clone());
            tokio::select! {
                r = serve_conn(conn, exports) => {
                    r.map_err(|e| AgentError::Peer(format!("NBD client: {e}")))
                }
                why = failed.wait() => Err(AgentError::Peer(why)),
            }
        }
        .await;
        // No more writes: the batcher drains, the writer sends End.
        export.tx.lock().take();
        if let Err(e) = served {
            failed.set(e.to_string());
            batcher.abort();
            writer.abort();
            reader.abort();
            return Err(e);
        }
        let batched = batcher
            .await
            .map_err(|e| AgentError::Internal(format!("batcher: {e}")));
        // The receiver's last word decides; the writer ends right after it.
        let writer_abort = writer.abort_handle();
        let done = tokio::time::timeout(Duration::from_secs(600), reader).await;
        let done = match done {
            Err(_) => {
                writer_abort.abort();
                return Err(AgentError::Peer(
                    "receiver did not finish within 600 s".into(),
                ));
            }
            Ok(j) => j.map_err(|e| AgentError::Internal(format!("WAN reader: {e}")))?,
        };
        let done = match done {
            Ok((true, _)) => Ok(()),
            Ok((false, why)) => Err(AgentError::Peer(why)),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            writer_abort.abort();
            return Err(e);
        }
        let written = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .map_err(|_| AgentError::Internal("WAN writer did not stop".into()))?
            .map_err(|e| AgentError::Internal(format!("WAN writer: {e}")))?;
        batched??;
        written?;
        let mut r = report.lock().clone();
        r.detail.completed = true;
        r.seconds = start.elapsed().as_secs_f64();
        Ok(r)
    }
}

/// Cut the queued writes into batches; each is prepared in a task of its
/// own, and the tasks enter the WAN queue in order.
async fn batcher(
    mut rx: mpsc::Receiver<Item>,
    queue: mpsc::Sender<Queued>,
    opts: Arc<DiskSendOptions>,
    report: Arc<Mutex<DiskReport>>,
    pullable: SharedPullable,
) -> Result<()> {
    let limit = opts.batch_blocks.max(1) * BLOCK;
    let mut pending: Vec<Item> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut seq = 0u64;
    loop {
        let item = if pending.is_empty() {
            rx.recv().await
        } else {
            match rx.try_recv() {
                Ok(i) => Some(i),
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing more right now: don't hold writes back.
                    seq += 1;
                    let batch = std::mem::take(&mut pending);
                    pending_bytes = 0;
                    send_batch(&queue, seq, batch, &opts, &pullable).await?;
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        match item {
            None => break,
            Some(Item::Flush(done)) => {
                if !pending.is_empty() {
                    seq += 1;
                    let batch = std::mem::take(&mut pending);
                    pending_bytes = 0;
                    send_batch(&queue, seq, batch, &opts, &pullable).await?;
                }
                report.lock().detail.flushes += 1;
                if queue.send(Queued::Flush(done)).await.is_err() {
                    return Ok(());
                }
            }
            Some(i) => {
                pending_bytes += match &i {
                    Item::Write { data, .. } => data.len(),
                    _ => 64,
                };
                pending.push(i);
                if pending_bytes >= limit {
                    seq += 1;
                    let batch = std::mem::take(&mut pending);
                    pending_bytes = 0;
                    send_batch(&queue, seq, batch, &opts, &pullable).await?;
                }
            }
        }
    }
    if !pending.is_empty() {
        seq += 1;
        send_batch(&queue, seq, pending, &opts, &pullable).await?;
    }
    Ok(())
}

async fn send_batch(
    queue: &mpsc::Sender<Queued>,
    seq: u64,
    items: Vec<Item>,
    opts: &Arc<DiskSendOptions>,
    pullable: &SharedPullable,
) -> Result<()> {
    let task = tokio::spawn(prepare(seq, items, opts.clone(), pullable.clone()));
    // A closed queue means the writer stopped on a failure it recorded.
    let _ = queue.send(Queued::Batch(task)).await;
    Ok(())
}

/// Split writes into zero ranges, whole blocks (hashed) and unaligned bytes.
fn draft(items: &[Item]) -> (Vec<Draft>, Vec<ChunkId>) {
    let mut out = Vec::new();
    let mut ids = Vec::new();
    let push_zero = |out: &mut Vec<Draft>, offset: u64, len: u32| {
        if let Some(Draft::Zero { offset: o, len: l }) = out.last_mut() {
            if *o + *l as u64 == offset && (*l as u64 + len as u64) <= u32::MAX as u64 / 2 {
                *l += len;
                return;
            }
        }
        out.push(Draft::Zero { offset, len });
    };
    for item in items {
        match item {
            Item::Zero { offset, len } => push_zero(&mut out, *offset, *len),
            Item::Write { offset, data } => {
                let end = offset + data.len() as u64;
                let mut at = *offset;
                // Unaligned head.
                let head_end = at.next_multiple_of(BLOCK as u64).min(end);
                if head_end > at {
                    out.push(Draft::Bytes {
                        offset: at,
                        len: (head_end - at) as u32,
                    });
                    at = head_end;
                }
                while at + BLOCK as u64 <= end {
                    let i = (at - offset) as usize;
                    let block = &data[i..i + BLOCK];
                    if crate::store::chunker::is_zero(block) {
                        push_zero(&mut out, at, BLOCK as u32);
                    } else {
                        let id = ChunkId::of(block);
                        ids.push(id);
                        out.push(Draft::Block { offset: at, id });
                    }
                    at += BLOCK as u64;
                }
                if end > at {
                    out.push(Draft::Bytes {
                        offset: at,
                        len: (end - at) as u32,
                    });
                }
            }
            Item::Flush(_) => {}
        }
    }
    (out, ids)
}

/// Bytes of the write covering `[offset, offset+len)` (it lies inside one).
fn bytes_at(items: &[Item], offset: u64, len: usize) -> Option<&[u8]> {
    items.iter().rev().find_map(|i| match i {
        Item::Write { offset: o, data }
            if *o <= offset && offset + len as u64 <= o + data.len() as u64 =>
        {
            let s = (offset - o) as usize;
            Some(&data[s..s + len])
        }
        _ => None,
    })
}

async fn prepare(
    seq: u64,
    items: Vec<Item>,
    opts: Arc<DiskSendOptions>,
    pullable: SharedPullable,
) -> Result<Prepared> {
    let items = Arc::new(items);
    let it = items.clone();
    let (drafts, ids) = tokio::task::spawn_blocking(move || draft(&it))
        .await
        .map_err(|e| AgentError::Internal(format!("hashing task: {e}")))?;
    let mut report = DiskReport::default();

    // Which blocks the destination site holds, and which another sender of
    // the group claimed first. A failing site only costs deduplication.
    let mut held = HashSet::new();
    let mut lost = HashSet::new();
    if let (Some(site), true) = (&opts.site, opts.dedup && !ids.is_empty()) {
        let mut unique: Vec<ChunkId> = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        match site.have(&unique).await {
            Ok(h) => {
                report.wan.queries += ID_LINE * (unique.len() + h.len()) as u64;
                held = h;
            }
            Err(e) => tracing::warn!("site lookup failed, sending the batch in full: {e}"),
        }
        if let Some(g) = &opts.group {
            let rest: Vec<ChunkId> = unique.into_iter().filter(|i| !held.contains(i)).collect();
            if !rest.is_empty() {
                match site.claim(g, &rest).await {
                    Ok(won) => {
                        report.wan.queries += ID_LINE * (rest.len() + won.len()) as u64;
                        lost = rest.into_iter().filter(|i| !won.contains(i)).collect();
                    }
                    Err(e) => tracing::warn!("claim failed, sending the batch in full: {e}"),
                }
            }
        }
    }

    let level = opts.zstd_level;
    tokio::task::spawn_blocking(move || {
        let mut ops = Vec::with_capacity(drafts.len());
        let mut blob = BytesMut::new();
        let mut literal_blocks = 0u64;
        let mut keep = Vec::new();
        for d in drafts {
            match d {
                Draft::Zero { offset, len } => {
                    report.detail.blocks.zero += (len as u64).div_ceil(BLOCK as u64);
                    report.wan.zero += 13;
                    report.detail.bytes_written += len as u64;
                    ops.push(DiskOp::Zero { offset, len });
                }
                Draft::Block { offset, id } => {
                    report.detail.bytes_written += BLOCK as u64;
                    if held.contains(&id) {
                        report.detail.blocks.by_hash += 1;
                        report.wan.by_hash += 41;
                        ops.push(DiskOp::Site { offset, id });
                    } else if lost.contains(&id) {
                        report.detail.blocks.claimed_by_other += 1;
                        report.wan.by_hash += 41;
                        ops.push(DiskOp::Group { offset, id });
                        let data = bytes_at(&items, offset, BLOCK).ok_or_else(|| {
                            AgentError::Internal(format!("no write covers block at {offset}"))
                        })?;
                        keep.push((id, Bytes::copy_from_slice(data)));
                    } else {
                        let data = bytes_at(&items, offset, BLOCK).ok_or_else(|| {
                            AgentError::Internal(format!("no write covers block at {offset}"))
                        })?;
                        blob.put_slice(data);
                        literal_blocks += 1;
                        report.wan.framing += 41;
                        ops.push(DiskOp::Block { offset, id });
                    }
                }
                Draft::Bytes { offset, len } => {
                    let data = bytes_at(&items, offset, len as usize).ok_or_else(|| {
                        AgentError::Internal(format!("no write covers bytes at {offset}"))
                    })?;
                    blob.put_slice(data);
                    report.detail.bytes_written += len as u64;
                    report.detail.blocks.unaligned_bytes += len as u64;
                    report.wan.framing += 13;
                    ops.push(DiskOp::Bytes { offset, len });
                }
            }
        }
        // Kept before the batch can reach the receiver, so a pull finds it.
        pullable.lock().keep(seq, keep);
        let raw_len = blob.len() as u32;
        let blob = blob.freeze();
        let (compressed, blob) = match level {
            Some(l) if !blob.is_empty() => match zstd::bulk::compress(&blob, l) {
                Ok(c) if c.len() < blob.len() => (true, Bytes::from(c)),
                _ => (false, blob),
            },
            _ => (false, blob),
        };
        if compressed {
            report.detail.blocks.literal_compressed += literal_blocks;
            report.wan.compressed += blob.len() as u64;
        } else {
            report.detail.blocks.literal_raw += literal_blocks;
            report.wan.raw += literal_blocks * BLOCK as u64;
            report.wan.literal += report.detail.blocks.unaligned_bytes;
        }
        let frame = DiskFrame::Batch {
            seq,
            ops,
            raw_len,
            compressed,
            blob,
        }
        .encode();
        // Frame and batch headers, and the zero ranges' operations (which
        // `wan.zero` tells apart, within framing).
        let accounted = report.wan.sum_of_parts();
        report.wan.framing += (frame.len() as u64).saturating_sub(accounted);
        Ok(Prepared { frame, report })
    })
    .await
    .map_err(|e| AgentError::Internal(format!("batch task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_split_unaligned_zero_and_blocks() {
        let mut data = vec![0u8; 3 * BLOCK + 100];
        // Block at 8192 is data[8092..12188]; the one at 4096 stays zero.
        data[8092..12188].fill(7);
        let items = vec![Item::Write {
            offset: 100,
            data: Bytes::from(data),
        }];
        let (d, ids) = draft(&items);
        assert!(matches!(
            d[0],
            Draft::Bytes {
                offset: 100,
                len: 3996
            }
        ));
        assert!(matches!(
            d[1],
            Draft::Zero {
                offset: 4096,
                len: 4096
            }
        ));
        assert!(matches!(d[2], Draft::Block { offset: 8192, .. }));
        assert!(matches!(
            d[3],
            Draft::Bytes {
                offset: 12288,
                len: 200
            }
        ));
        assert_eq!((d.len(), ids.len()), (4, 1));
    }
}
