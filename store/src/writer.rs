//! The write path: stream -> chunker -> BLAKE3 -> write the chunk if absent
//! -> commit manifest and reference counts atomically -> only then acknowledge.
//!
//! MD5 (the S3 ETag) runs on its own thread, fed the same `Bytes` the chunker
//! sees, so it overlaps with chunking, hashing and writing instead of adding a
//! second pass: it is the slowest hash here and sets the ingest ceiling.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use md5::{Digest, Md5};

use super::chunker::{Chunker, Piece, ProfileChoice};
use super::error::{Result, StoreError};
use super::id::{BuildIdHasher, ChunkId};
use super::index::Loc;
use super::meta::Table;
use super::model::{self, ManifestEntry, ObjectRecord, PartRecord};
use super::segment::{RecordRef, Segment, SegmentAppender};
use super::shared::{put_locs, StagingPipe};
use super::{now_ms, replace_object, RefDeltas, Store};

/// Largest zero run one manifest entry describes.
const MAX_ZERO_ENTRY: u64 = 1 << 30;

/// Condition an object write must meet at commit (S3 conditional writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    #[default]
    None,
    /// If-None-Match: * — only create, never overwrite.
    IfAbsent,
    /// If-Match: the current object must have this ETag (`*`: any).
    IfMatch(String),
    /// If-None-Match: comma-separated ETags (or `*`) the current object must
    /// not have; a missing object always passes.
    IfNoneMatch(String),
}

impl Precondition {
    /// `Ok` if a write may replace the object whose ETag is `current_etag`
    /// (`None`: no object). If-Match on a missing object is `NoSuchKey`, as
    /// S3 answers, so callers name the key.
    pub fn check(&self, current_etag: Option<&str>, bucket: &str, key: &str) -> Result<()> {
        let ok = match (self, current_etag) {
            (Precondition::None, _) => true,
            (Precondition::IfAbsent, cur) => cur.is_none(),
            (Precondition::IfMatch(_), None) => {
                return Err(StoreError::NoSuchKey {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            (Precondition::IfMatch(want), Some(cur)) => {
                let want = want.trim().trim_matches('"');
                want == "*" || want == cur
            }
            (Precondition::IfNoneMatch(_), None) => true,
            (Precondition::IfNoneMatch(list), Some(cur)) => !list
                .split(',')
                .map(|t| t.trim().trim_matches('"'))
                .any(|t| t == "*" || t == cur),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Object {
        bucket: String,
        key: String,
        precondition: Precondition,
    },
    Part {
        upload_id: String,
        part: u32,
    },
}

/// What a successful `finish` committed.
#[derive(Debug, Clone)]
pub struct Committed {
    pub size: u64,
    pub etag: String,
    pub md5: [u8; 16],
    pub modified_ms: u64,
    pub profile: String,
    /// Bytes of chunk data this write added to the store (after dedup).
    pub new_bytes: u64,
    pub chunks: usize,
}

struct Md5Pipe {
    tx: Option<SyncSender<Vec<Bytes>>>,
    handle: Option<JoinHandle<[u8; 16]>>,
    /// Pieces not yet handed to the thread, and their bytes.
    pending: Vec<Bytes>,
    pending_bytes: usize,
}

/// Pieces go to the MD5 thread in groups of about this many bytes. An S3
/// body arrives in frames of a few KiB to 64 KiB: one handoff each kept the
/// queue full of small pieces, so the two threads woke each other per frame
/// and MD5 (the ingest's critical path) waited on the handoffs.
const MD5_GROUP_BYTES: usize = 1 << 20;
/// Groups queued for the MD5 thread. Each keeps buffers alive the chunker is
/// already done with: a short queue bounds a writer's memory (64 clients at
/// once) to about 8 MiB each.
const MD5_QUEUE: usize = 8;

impl Md5Pipe {
    fn start() -> Md5Pipe {
        let (tx, rx) = sync_channel::<Vec<Bytes>>(MD5_QUEUE);
        let handle = std::thread::Builder::new()
            .name("strato-md5".into())
            .spawn(move || {
                let mut h = Md5::new();
                for group in rx {
                    for b in group {
                        h.update(&b);
                    }
                }
                h.finalize().into()
            })
            .ok();
        Md5Pipe {
            tx: Some(tx),
            handle,
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }

    fn feed(&mut self, b: Bytes) -> Result<()> {
        self.pending_bytes += b.len();
        self.pending.push(b);
        if self.pending_bytes >= MD5_GROUP_BYTES {
            self.flush()
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let group = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        match &self.tx {
            Some(tx) if tx.send(group).is_ok() => Ok(()),
            _ => Err(StoreError::Aborted("the MD5 thread is gone".into())),
        }
    }

    fn finish(mut self) -> Result<[u8; 16]> {
        self.flush()?;
        drop(self.tx.take());
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .ok_or_else(|| StoreError::Aborted("the MD5 thread failed".into()))
    }
}

impl Drop for Md5Pipe {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub struct ObjectWriter {
    store: Store,
    target: Target,
    chunker: Chunker,
    md5: Option<Md5Pipe>,
    /// New chunks go to this thread, which appends them to segments, so disk
    /// writes overlap with chunking and hashing on the caller's thread.
    segments: Option<SegmentPipe>,
    /// Shared mode's equivalent: staging segments uploaded as objects.
    staging: Option<StagingPipe>,
    batch: Vec<(ChunkId, Bytes)>,
    batch_bytes: usize,
    entries: Vec<ManifestEntry>,
    /// Every id this writer pinned (unpinned when it ends, committed or not).
    pinned: HashSet<ChunkId, BuildIdHasher>,
    /// Other writers' segments holding chunks we deduplicated against that
    /// were not yet durable, and the offset that must be synced before commit.
    to_sync: SyncSet,
    pieces: Vec<Piece>,
    size: u64,
    new_bytes: u64,
    token: u64,
}

type SyncSet = HashMap<u32, (Arc<Segment>, u64)>;

/// Hand a batch to the segment thread once it holds this many bytes.
const BATCH_BYTES: usize = 1 << 20;
/// The segment thread asks for an fdatasync after this many bytes, so the
/// final sync before commit is short and writeback overlaps with ingest.
const SYNC_EVERY: u64 = 64 << 20;

/// Segments to sync, each up to an offset.
type SyncBatch = Vec<(Arc<Segment>, u64)>;

enum SyncJob {
    Sync(SyncBatch),
    Seal(Box<SegmentAppender>),
}

/// Runs a writer's periodic fdatasyncs on their own thread. Done on the
/// segment thread, each one stopped all appends for as long as the disk
/// took to write 64 MiB; the 12 MiB queued ahead of it drained in a fraction
/// of that, so chunking and MD5 stood still: on 1 GiB, most of the gap to
/// the MD5 ceiling. A sync still running when the next is due is not
/// queued again: the final sync before commit covers whatever is left.
/// Full segments are sealed (trailer, fsync) here too, for the same reason;
/// the writer joins this thread before it commits.
struct Syncer {
    tx: Option<SyncSender<SyncJob>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Syncer {
    fn start() -> Result<Syncer> {
        let (tx, rx) = sync_channel::<SyncJob>(1);
        let handle = std::thread::Builder::new()
            .name("strato-sync".into())
            .spawn(move || -> Result<()> {
                for job in rx {
                    match job {
                        SyncJob::Sync(batch) => {
                            for (seg, end) in batch {
                                seg.sync_to(end)?;
                            }
                        }
                        SyncJob::Seal(app) => {
                            (*app).seal()?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| StoreError::Aborted(format!("cannot start a sync thread: {e}")))?;
        Ok(Syncer {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Ask for these syncs unless the last request is still running.
    /// False if the thread has stopped (its error comes from `finish`).
    fn request(&self, batch: SyncBatch) -> bool {
        matches!(
            self.tx.as_ref().map(|tx| tx.try_send(SyncJob::Sync(batch))),
            Some(Ok(()) | Err(std::sync::mpsc::TrySendError::Full(_)))
        )
    }

    /// Seal `app` on the thread (waiting for a sync in flight to be taken);
    /// inline if the thread has stopped.
    fn seal(&self, app: SegmentAppender) -> Result<()> {
        let Some(tx) = self.tx.as_ref() else {
            return app.seal().map(drop);
        };
        match tx.send(SyncJob::Seal(Box::new(app))) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::SendError(SyncJob::Seal(app))) => (*app).seal().map(drop),
            Err(_) => Ok(()),
        }
    }

    /// Wait for the syncs in flight. A failed fdatasync must fail the write:
    /// after a failure Linux may report the next fsync of the file as
    /// successful although the data never reached the disk.
    fn finish(&mut self) -> Result<()> {
        drop(self.tx.take());
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StoreError::Aborted("the sync thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The segment thread of one writer.
struct SegmentPipe {
    tx: Option<SyncSender<Vec<(ChunkId, Bytes)>>>,
    handle: Option<JoinHandle<Result<SyncSet>>>,
}

impl SegmentPipe {
    fn start(store: Store) -> Result<SegmentPipe> {
        let (tx, rx) = sync_channel::<Vec<(ChunkId, Bytes)>>(4);
        let handle = std::thread::Builder::new()
            .name("strato-segment".into())
            .spawn(move || segment_thread(store, rx))
            .map_err(|e| StoreError::Aborted(format!("cannot start a segment thread: {e}")))?;
        Ok(SegmentPipe {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// False if the thread has stopped (its error comes from `finish`).
    fn send(&mut self, batch: Vec<(ChunkId, Bytes)>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok())
    }

    /// Wait for every record to be written and published; returns the
    /// segments to sync before commit.
    fn finish(&mut self) -> Result<SyncSet> {
        drop(self.tx.take());
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StoreError::Aborted("the segment thread panicked".into())),
            None => Ok(SyncSet::new()),
        }
    }
}

impl Drop for SegmentPipe {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn segment_thread(
    store: Store,
    rx: std::sync::mpsc::Receiver<Vec<(ChunkId, Bytes)>>,
) -> Result<SyncSet> {
    let mut appender: Option<SegmentAppender> = None;
    let mut unpublished: Vec<RecordRef> = Vec::new();
    let mut to_sync = SyncSet::new();
    let mut since_sync = 0u64;
    let mut syncer: Option<Syncer> = None;
    let result = (|| -> Result<()> {
        for batch in rx {
            for (id, data) in batch {
                if appender.is_none() {
                    appender = Some(store.take_appender()?);
                }
                let Some(app) = appender.as_mut() else {
                    return Err(StoreError::Aborted("no open segment".into()));
                };
                unpublished.push(app.append(&id, &data));
                since_sync += data.len() as u64;
            }
            publish(
                &store,
                &mut appender,
                &mut unpublished,
                &mut to_sync,
                &mut syncer,
            )?;
            if since_sync >= SYNC_EVERY {
                if syncer.is_none() {
                    syncer = Some(Syncer::start()?);
                }
                let due: Vec<_> = to_sync.values().map(|(s, e)| (s.clone(), *e)).collect();
                if !syncer.as_ref().is_some_and(|s| s.request(due)) {
                    break; // the sync thread failed: its error is returned below
                }
                since_sync = 0;
            }
        }
        Ok(())
    })();
    // Publish what reached the segment even on failure: it is then garbage
    // that GC can account for, not an invisible tail.
    let flushed = publish(
        &store,
        &mut appender,
        &mut unpublished,
        &mut to_sync,
        &mut syncer,
    );
    if let Some(app) = appender.take() {
        store.return_appender(app);
    }
    // Every background sync and seal done (or failed) before the commit.
    let synced = syncer.as_mut().map_or(Ok(()), Syncer::finish);
    result?;
    flushed?;
    synced?;
    Ok(to_sync)
}

/// Hand buffered records to the kernel, publish them in the index, and roll
/// to a new segment when this one is full.
fn publish(
    store: &Store,
    appender: &mut Option<SegmentAppender>,
    unpublished: &mut Vec<RecordRef>,
    to_sync: &mut SyncSet,
    syncer: &mut Option<Syncer>,
) -> Result<()> {
    let Some(app) = appender.as_mut() else {
        return Ok(());
    };
    app.flush()?;
    let seg = app.segment().clone();
    let end = app.end_offset();
    let seg_id = seg.id;
    store
        .inner()
        .index
        .insert_many(unpublished.drain(..).map(|r| {
            (
                r.id,
                Loc {
                    segment: seg_id,
                    len: r.len,
                    offset: r.offset,
                },
            )
        }));
    if end >= store.config().segment_size {
        // Sealing makes the whole segment durable (on the sync thread,
        // joined before the commit).
        if let Some(app) = appender.take() {
            if syncer.is_none() {
                *syncer = Some(Syncer::start()?);
            }
            match syncer.as_ref() {
                Some(s) => s.seal(app)?,
                None => drop(app.seal()?),
            }
        }
        to_sync.remove(&seg_id);
    } else {
        let e = to_sync.entry(seg_id).or_insert((seg, 0));
        e.1 = e.1.max(end);
    }
    Ok(())
}

impl ObjectWriter {
    pub(crate) fn new(store: Store, target: Target, chunking: ProfileChoice) -> ObjectWriter {
        let token = store.register_inflight();
        ObjectWriter {
            store,
            target,
            chunker: Chunker::new(chunking),
            md5: Some(Md5Pipe::start()),
            segments: None,
            staging: None,
            batch: Vec::new(),
            batch_bytes: 0,
            entries: Vec::new(),
            pinned: HashSet::default(),
            to_sync: HashMap::new(),
            pieces: Vec::new(),
            size: 0,
            new_bytes: 0,
            token,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.size += data.len() as u64;
        if let Some(m) = self.md5.as_mut() {
            m.feed(data.clone())?;
        }
        let mut pieces = std::mem::take(&mut self.pieces);
        self.chunker.feed(&data, &mut pieces);
        let r = self.store_pieces(&mut pieces);
        self.pieces = pieces;
        r
    }

    fn store_pieces(&mut self, pieces: &mut Vec<Piece>) -> Result<()> {
        for piece in pieces.drain(..) {
            match piece {
                Piece::Zeros(mut n) => {
                    while n > 0 {
                        let len = n.min(MAX_ZERO_ENTRY);
                        self.entries.push(ManifestEntry {
                            id: ChunkId::ZERO_RUN,
                            len: len as u32,
                        });
                        n -= len;
                    }
                }
                Piece::Data(bytes) => self.store_chunk(bytes)?,
            }
        }
        Ok(())
    }

    fn store_chunk(&mut self, data: Bytes) -> Result<()> {
        let id = ChunkId::of(&data);
        let len = data.len() as u32;
        self.entries.push(ManifestEntry { id, len });
        if self.pinned.contains(&id) {
            return Ok(()); // ours already: stored earlier in this stream, or a hit
        }
        self.pinned.insert(id);
        // Shared mode looks a whole batch up at once in `send_batch`.
        let inner = self.store.inner();
        if self.store.shared().is_none() {
            if let Some(loc) = inner.index.pin_lookup(&id) {
                self.note_dependency(loc);
                return Ok(());
            }
        }
        self.new_bytes += len as u64;
        self.batch_bytes += data.len();
        self.batch.push((id, data));
        if self.batch_bytes >= BATCH_BYTES {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        if self.store.shared().is_some() {
            return self.send_batch_shared();
        }
        if self.segments.is_none() {
            self.segments = Some(SegmentPipe::start(self.store.clone())?);
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let sent = self.segments.as_mut().is_some_and(|p| p.send(batch));
        if !sent {
            // The thread stopped on an error: report that error.
            let err = self.segments.take().map(|mut p| p.finish());
            return Err(match err {
                Some(Err(e)) => e,
                _ => StoreError::Aborted("the segment thread stopped".into()),
            });
        }
        Ok(())
    }

    /// Shared mode: one lookup for the batch (other frontends' chunks
    /// included); only the chunks nobody has stored go to staging.
    fn send_batch_shared(&mut self) -> Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
        let found = self.store.shared_lookup(&ids)?;
        let mut hit = found.iter();
        batch.retain(|(_, data)| {
            let stored = hit.next().is_some_and(Option::is_some);
            if stored {
                self.new_bytes -= data.len() as u64;
            }
            !stored
        });
        if batch.is_empty() {
            return Ok(());
        }
        if self.staging.is_none() {
            self.staging = Some(StagingPipe::start(self.store.clone())?);
        }
        if !self.staging.as_mut().is_some_and(|p| p.send(batch)) {
            let err = self.staging.take().map(|mut p| p.finish());
            return Err(match err {
                Some(Err(e)) => e,
                _ => StoreError::Aborted("the staging thread stopped".into()),
            });
        }
        Ok(())
    }

    fn note_dependency(&mut self, loc: Loc) {
        let end = loc.offset + super::segment::RECORD_HEADER_LEN + loc.len as u64;
        if let Some(seg) = self.store.inner().segments.read().get(&loc.segment) {
            if !seg.is_durable(end) {
                let e = self.to_sync.entry(loc.segment).or_insert((seg.clone(), 0));
                e.1 = e.1.max(end);
            }
        }
    }

    /// Commit: make every referenced chunk durable, then the manifest and its
    /// reference counts in one transaction. Returns only once all is durable.
    /// `expected_md5` (Content-MD5) is checked before anything is committed.
    pub fn finish(mut self, attrs: Vec<u8>, expected_md5: Option<[u8; 16]>) -> Result<Committed> {
        let mut pieces = std::mem::take(&mut self.pieces);
        let profile = self.chunker.finish(&mut pieces);
        self.store_pieces(&mut pieces)?;
        self.send_batch()?;
        // Before the last upload: a body that fails its Content-MD5 check
        // must not leave a segment object behind.
        let md5 = match self.md5.take() {
            Some(m) => m.finish()?,
            None => return Err(StoreError::Aborted("writer already finished".into())),
        };
        if expected_md5.is_some_and(|want| want != md5) {
            return Err(StoreError::BadDigest);
        }
        if let Some(mut pipe) = self.segments.take() {
            for (id, (seg, end)) in pipe.finish()? {
                let e = self.to_sync.entry(id).or_insert((seg, 0));
                e.1 = e.1.max(end);
            }
        }
        // Shared mode: every new chunk is in an acknowledged segment object
        // once this returns; their locations commit with the manifest.
        let new_locs = match self.staging.take() {
            Some(mut pipe) => pipe.finish()?,
            None => Vec::new(),
        };
        for (seg, end) in self.to_sync.values() {
            seg.sync_to(*end)?;
        }
        let now = now_ms();
        let profile = profile.to_string();
        let etag = hex::encode(md5);
        let store = self.store.clone();
        let inner = store.inner();
        let _c = inner.commit_lock.read();
        match &self.target {
            Target::Object {
                bucket,
                key,
                precondition,
            } => {
                let rec = ObjectRecord {
                    size: self.size,
                    etag: etag.clone(),
                    modified_ms: now,
                    profile: profile.clone(),
                    attrs,
                    parts: 0,
                };
                let okey = model::object_key(bucket, key);
                let entries = &self.entries;
                inner.meta.write(&mut |tx| {
                    if tx.get(Table::Buckets, bucket.as_bytes())?.is_none() {
                        return Err(StoreError::NoSuchBucket(bucket.clone()));
                    }
                    let mut deltas = RefDeltas::default();
                    deltas.add(entries);
                    replace_object(tx, &okey, &rec, entries, precondition, &mut deltas)?;
                    put_locs(tx, &new_locs)?;
                    deltas.apply(tx, now)
                })?;
                drop(_c);
                store.index_if_enabled(bucket, key);
            }
            Target::Part { upload_id, part } => {
                let rec = PartRecord {
                    size: self.size,
                    md5,
                    modified_ms: now,
                    profile: profile.clone(),
                    chunks: self.entries.clone(),
                };
                let encoded = model::encode(&rec)?;
                let extra = if attrs.is_empty() {
                    Vec::new()
                } else {
                    model::encode(&model::PartAttrsRecord {
                        md5,
                        modified_ms: now,
                        attrs,
                    })?
                };
                let pkey = model::part_key(upload_id, *part);
                inner.meta.write(&mut |tx| {
                    if tx.get(Table::Uploads, upload_id.as_bytes())?.is_none() {
                        return Err(StoreError::NoSuchUpload(upload_id.clone()));
                    }
                    let mut deltas = RefDeltas::default();
                    deltas.add(&rec.chunks);
                    if let Some(old) = tx.get(Table::Parts, &pkey)? {
                        let old: PartRecord = model::decode(&old)?;
                        deltas.sub(&old.chunks);
                    }
                    tx.put(Table::Parts, &pkey, &encoded)?;
                    // The part's attributes go with this upload of it: a
                    // re-upload without any must not inherit the last one's.
                    if extra.is_empty() {
                        tx.delete(Table::PartAttrs, &pkey)?;
                    } else {
                        tx.put(Table::PartAttrs, &pkey, &extra)?;
                    }
                    put_locs(tx, &new_locs)?;
                    deltas.apply(tx, now)
                })?;
            }
        }
        store.shared_committed(&new_locs);
        Ok(Committed {
            size: self.size,
            etag,
            md5,
            modified_ms: now,
            profile,
            new_bytes: self.new_bytes,
            chunks: self.entries.len(),
        })
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // Committed or abandoned, the references now live in metadata (or
        // nowhere). Let the segment thread publish what it wrote (garbage for
        // GC if abandoned) and hand its segment back, then drop our pins.
        self.batch.clear();
        if let Some(mut pipe) = self.segments.take() {
            let _ = pipe.finish();
        }
        self.store.inner().index.unpin_all(self.pinned.iter());
        self.store.unregister_inflight(self.token);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use md5::{Digest, Md5};
    use rand::{Rng, SeedableRng};

    use super::super::{Store, StoreConfig};

    /// More than SYNC_EVERY in one write, across several segments, so the
    /// background syncs and the grouped MD5 handoff both run: the object
    /// reads back byte for byte, with the body's MD5 as its ETag, and every
    /// segment it used is durable once the write returned.
    #[test]
    fn large_write_with_background_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                segment_size: 48 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        store.create_bucket("bench", "admin").unwrap();
        let mut data = vec![0u8; (super::SYNC_EVERY + (24 << 20)) as usize];
        rand::rngs::StdRng::seed_from_u64(14).fill(&mut data[..]);
        let c = store
            .put_reader(
                "bench",
                "big",
                Cursor::new(&data),
                "cdc".parse().unwrap(),
                vec![],
                |_| {},
            )
            .unwrap();
        assert_eq!(c.size, data.len() as u64);
        assert_eq!(c.etag, hex::encode(Md5::digest(&data)));
        let mut back = Vec::with_capacity(data.len());
        for piece in store.read("bench", "big", None).unwrap() {
            back.extend_from_slice(&piece.unwrap());
        }
        assert!(back == data, "object read back differs");
        for seg in store.inner().segments.read().values() {
            let end = std::fs::metadata(&seg.path).unwrap().len();
            assert!(seg.is_durable(end), "segment {} not synced", seg.id);
        }
    }
}
