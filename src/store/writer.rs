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
use super::segment::{RecordRef, Segment, SegmentAppender, APPEND_BUFFER};
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
    /// If-Match: the current object must have this ETag.
    IfMatch(String),
}

impl Precondition {
    pub fn check(&self, current_etag: Option<&str>) -> Result<()> {
        let ok = match (self, current_etag) {
            (Precondition::None, _) => true,
            (Precondition::IfAbsent, cur) => cur.is_none(),
            (Precondition::IfMatch(_), None) => false,
            (Precondition::IfMatch(want), Some(cur)) => {
                let want = want.trim().trim_matches('"');
                want == "*" || want == cur
            }
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
    tx: Option<SyncSender<Bytes>>,
    handle: Option<JoinHandle<[u8; 16]>>,
}

impl Md5Pipe {
    fn start() -> Md5Pipe {
        let (tx, rx) = sync_channel::<Bytes>(32);
        let handle = std::thread::Builder::new()
            .name("strato-md5".into())
            .spawn(move || {
                let mut h = Md5::new();
                for b in rx {
                    h.update(&b);
                }
                h.finalize().into()
            })
            .ok();
        Md5Pipe {
            tx: Some(tx),
            handle,
        }
    }

    fn feed(&mut self, b: Bytes) -> Result<()> {
        match &self.tx {
            Some(tx) if tx.send(b).is_ok() => Ok(()),
            _ => Err(StoreError::Aborted("the MD5 thread is gone".into())),
        }
    }

    fn finish(mut self) -> Result<[u8; 16]> {
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
    appender: Option<SegmentAppender>,
    entries: Vec<ManifestEntry>,
    /// Every id this writer pinned (unpinned when it ends, committed or not).
    pinned: HashSet<ChunkId, BuildIdHasher>,
    /// Records in the appender's buffer, published to the index on flush.
    unpublished: Vec<RecordRef>,
    /// Segments holding chunks we reference that were not yet durable, and
    /// the end offset that must be synced before commit.
    to_sync: HashMap<u32, (Arc<Segment>, u64)>,
    pieces: Vec<Piece>,
    size: u64,
    new_bytes: u64,
    token: u64,
}

impl ObjectWriter {
    pub(crate) fn new(store: Store, target: Target, chunking: ProfileChoice) -> ObjectWriter {
        let token = store.register_inflight();
        ObjectWriter {
            store,
            target,
            chunker: Chunker::new(chunking),
            md5: Some(Md5Pipe::start()),
            appender: None,
            entries: Vec::new(),
            pinned: HashSet::default(),
            unpublished: Vec::new(),
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
        let inner = self.store.inner();
        if let Some(loc) = inner.index.pin_lookup(&id) {
            self.note_dependency(loc);
            return Ok(());
        }
        if self.appender.is_none() {
            self.appender = Some(self.store.take_appender()?);
        }
        let Some(app) = self.appender.as_mut() else {
            return Err(StoreError::Aborted("no open segment".into()));
        };
        let rec = app.append(&id, &data);
        self.unpublished.push(rec);
        self.new_bytes += len as u64;
        if app.buffered() >= APPEND_BUFFER {
            self.flush()?;
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

    /// Hand buffered records to the kernel and publish them in the index.
    fn flush(&mut self) -> Result<()> {
        let Some(app) = self.appender.as_mut() else {
            return Ok(());
        };
        app.flush()?;
        let seg = app.segment().clone();
        let end = app.end_offset();
        let seg_id = seg.id;
        let roll = end >= self.store.config().segment_size;
        self.store
            .inner()
            .index
            .insert_many(self.unpublished.drain(..).map(|r| {
                (
                    r.id,
                    Loc {
                        segment: seg_id,
                        len: r.len,
                        offset: r.offset,
                    },
                )
            }));
        if roll {
            // Sealing makes the whole segment durable.
            if let Some(app) = self.appender.take() {
                app.seal()?;
            }
            self.to_sync.remove(&seg_id);
        } else {
            let e = self.to_sync.entry(seg_id).or_insert((seg, 0));
            e.1 = e.1.max(end);
        }
        Ok(())
    }

    /// Commit: make every referenced chunk durable, then the manifest and its
    /// reference counts in one transaction. Returns only once all is durable.
    /// `expected_md5` (Content-MD5) is checked before anything is committed.
    pub fn finish(mut self, attrs: Vec<u8>, expected_md5: Option<[u8; 16]>) -> Result<Committed> {
        let mut pieces = std::mem::take(&mut self.pieces);
        let profile = self.chunker.finish(&mut pieces);
        self.store_pieces(&mut pieces)?;
        self.flush()?;
        let md5 = match self.md5.take() {
            Some(m) => m.finish()?,
            None => return Err(StoreError::Aborted("writer already finished".into())),
        };
        if expected_md5.is_some_and(|want| want != md5) {
            return Err(StoreError::BadDigest);
        }
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
                    deltas.apply(tx, now)
                })?;
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
                    deltas.apply(tx, now)
                })?;
            }
        }
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
        // nowhere); either way our pins and open segment go back.
        if let Some(mut app) = self.appender.take() {
            // Publish what was written so GC can account for it as garbage.
            if app.flush().is_ok() {
                let seg_id = app.segment().id;
                self.store
                    .inner()
                    .index
                    .insert_many(self.unpublished.drain(..).map(|r| {
                        (
                            r.id,
                            Loc {
                                segment: seg_id,
                                len: r.len,
                                offset: r.offset,
                            },
                        )
                    }));
                self.store.return_appender(app);
            }
        }
        self.store.inner().index.unpin_all(self.pinned.iter());
        self.store.unregister_inflight(self.token);
    }
}
