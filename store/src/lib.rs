//! THE content-addressed store: the only code that knows the on-disk layout.
//!
//! ```text
//! DATA/FORMAT          "strato-store 1"
//! DATA/LOCK            held (flock) while a process has the store open
//! DATA/segments/*.seg  chunk data, append-only (see segment.rs)
//! DATA/meta.redb       metadata (or meta.sled/ with the sled engine)
//! ```
//!
//! Durability policy: a writer fdatasyncs every segment holding a chunk its
//! manifest references (its own, or another writer's for a dedup hit) before
//! the metadata transaction commits, and the metadata engine fsyncs the commit
//! before `finish` returns. Nothing is acknowledged before both. A crash can
//! leave unreferenced records (reclaimed by GC) or a torn segment tail (cut on
//! the next open), never a manifest pointing at missing data.
//!
//! With the s3 segment backend (`Storage::S3`, shared.rs) the same promise
//! holds across machines: a writer's new chunks are uploaded as one sealed
//! segment object, and only after the object store acknowledged it do the
//! manifest, the reference counts and the chunks' locations commit in one
//! metadata transaction. GC and fsck refuse to run in that mode for now.

mod audit;
pub mod blocks;
mod cache;
pub mod chunker;
pub mod error;
mod fsck;
mod gc;
mod history;
pub mod id;
pub mod index;
pub mod meta;
pub mod model;
mod names;
pub mod objstore;
mod parts;
mod reader;
pub mod segment;
mod shared;
mod shared_fsck;
mod shared_gc;
mod stats;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

pub use blocks::{BlockIndexReport, BlockRef, BucketOptions};
pub use cache::CacheStats;
pub use chunker::{Profile, ProfileChoice};
pub use error::{Result, StoreError};
pub use fsck::{FsckProblem, FsckReport};
pub use gc::{GcOptions, GcPlan, GcReport};
pub use history::{FsckRecord, GcRecord, HistorySample, ObjectCost};
pub use id::ChunkId;
pub use meta::Engine;
pub use model::{BucketRecord, ManifestEntry, ObjectMeta, ObjectRecord, PartRecord, UploadRecord};
pub use names::{check_bucket_name, check_key, MAX_KEY_LEN};
pub use objstore::S3Settings;
pub use reader::ObjectReader;
pub use shared_gc::SharedGcReport;
pub use stats::{ProfileStats, StoreStats};
pub use writer::{Committed, ObjectWriter, Precondition, Target};

use error::IoContext;
use index::{ChunkIndex, Loc};
use meta::{MetaStore, MetaTxn, Table};
use segment::{Segment, SegmentAppender};

const FORMAT: &str = "strato-store 1";
/// S3's minimum size for every part but the last.
/// The first user of a repository, and the owner of the buckets node-side
/// tools (pull caches, chain and multicast stores) create in their own
/// stores.
pub const FIRST_USER: &str = "admin";

pub const MIN_PART_SIZE: u64 = 5 << 20;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn now_secs() -> u64 {
    now_ms() / 1000
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub engine: Engine,
    /// Where the postgres engine's database is (`postgres://...`).
    pub meta_url: Option<String>,
    /// A segment is sealed once it grows past this many bytes.
    pub segment_size: u64,
    /// Re-hash chunks on every read (always done by fsck).
    pub verify_reads: bool,
    /// Minimum size of every multipart part but the last.
    pub min_part_size: u64,
    /// Where segments live (local files by default).
    pub storage: Storage,
}

/// The segment backend: `local` keeps segments in DATA/segments (the
/// embedded default); `s3` keeps them as objects in an S3-compatible store
/// and the chunk index in the metadata store (see shared.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Storage {
    #[default]
    Local,
    S3(Box<S3Settings>),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: Engine::Redb,
            meta_url: None,
            segment_size: 256 << 20,
            verify_reads: true,
            min_part_size: MIN_PART_SIZE,
            storage: Storage::Local,
        }
    }
}

/// A handle to an open store; cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    seg_dir: PathBuf,
    cfg: StoreConfig,
    meta: Box<dyn MetaStore>,
    index: ChunkIndex,
    segments: RwLock<HashMap<u32, Arc<Segment>>>,
    next_segment: AtomicU32,
    /// Open segments not currently used by a writer, reused by the next one so
    /// small objects don't each start a segment.
    pool: Mutex<Vec<SegmentAppender>>,
    /// Manifest commits hold this shared; GC holds it exclusively while it
    /// audits reference counts and removes chunks, so the two never interleave.
    commit_lock: RwLock<()>,
    /// Start times (ms) of writers in flight, by token.
    inflight: Mutex<BTreeMap<u64, u64>>,
    next_token: AtomicU64,
    layouts: Mutex<LayoutCache>,
    opened_ms: u64,
    /// The s3 segment backend and its caches; `None` in local mode.
    shared: Option<shared::Shared>,
    _lock: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for app in self.pool.get_mut().drain(..) {
            if let Err(e) = app.seal() {
                tracing::warn!("sealing segment at close failed: {e}");
            }
        }
    }
}

/// What `Store::open` found and repaired.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    pub segments: usize,
    pub chunks: usize,
    pub recovered_segments: usize,
    pub truncated_bytes: u64,
}

impl Store {
    pub fn open(dir: &Path, cfg: StoreConfig) -> Result<Store> {
        Self::open_with_report(dir, cfg).map(|(s, _)| s)
    }

    pub fn open_with_report(dir: &Path, cfg: StoreConfig) -> Result<(Store, OpenReport)> {
        std::fs::create_dir_all(dir).at(dir)?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .at(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(dir.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).at(&lock_path),
        }
        check_format(dir)?;
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir).at(&seg_dir)?;
        let meta = meta::open(cfg.engine, cfg.meta_url.as_deref(), dir)?;
        meta.check_format(FORMAT)?;
        shared::check_meta_backend(&*meta, matches!(cfg.storage, Storage::S3(_)))?;

        let shared = match &cfg.storage {
            Storage::Local => {
                shared::check_data_dir(dir, &seg_dir, false)?;
                None
            }
            Storage::S3(s) => {
                shared::check_data_dir(dir, &seg_dir, true)?;
                Some(shared::Shared::open(dir, s, FORMAT)?)
            }
        };
        let index = ChunkIndex::default();
        let mut segments = HashMap::new();
        let mut report = OpenReport::default();
        let mut max_id = 0u32;
        let mut ids: Vec<u32> = Vec::new();
        for entry in std::fs::read_dir(&seg_dir).at(&seg_dir)? {
            let entry = entry.at(&seg_dir)?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_segment_file_name)
            {
                ids.push(id);
            }
        }
        // Older segments first, so the index prefers the original copy of a chunk.
        ids.sort_unstable();
        for id in ids {
            let path = seg_dir.join(segment::segment_file_name(id));
            let opened = segment::open_segment(&path, id)?;
            if opened.recovered {
                tracing::warn!(
                    segment = %path.display(),
                    cut = opened.truncated_bytes,
                    "recovered unsealed segment"
                );
                report.recovered_segments += 1;
                report.truncated_bytes += opened.truncated_bytes;
            }
            index.insert_many(opened.records.iter().map(|r| {
                (
                    r.id,
                    Loc {
                        segment: id,
                        len: r.len,
                        offset: r.offset,
                    },
                )
            }));
            max_id = max_id.max(id);
            segments.insert(id, opened.segment);
        }
        report.segments = segments.len();
        report.chunks = index.len();
        let inner = Inner {
            dir: dir.to_owned(),
            seg_dir,
            cfg,
            meta,
            index,
            segments: RwLock::new(segments),
            next_segment: AtomicU32::new(max_id + 1),
            pool: Mutex::new(Vec::new()),
            commit_lock: RwLock::new(()),
            inflight: Mutex::new(BTreeMap::new()),
            next_token: AtomicU64::new(1),
            layouts: Mutex::new(LayoutCache::default()),
            opened_ms: now_ms(),
            shared,
            _lock: lock,
        };
        Ok((
            Store {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn engine(&self) -> &'static str {
        self.inner.meta.engine()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    // ---- buckets ---------------------------------------------------------

    pub fn create_bucket(&self, name: &str, owner: &str) -> Result<()> {
        check_bucket_name(name)?;
        let rec = model::encode(&BucketRecord {
            owner: owner.to_string(),
            created_ms: now_ms(),
        })?;
        self.inner.meta.write(&mut |tx| {
            if let Some(existing) = tx.get(Table::Buckets, name.as_bytes())? {
                let existing: BucketRecord = model::decode(&existing)?;
                return Err(if existing.owner == owner {
                    StoreError::BucketAlreadyOwnedByYou(name.into())
                } else {
                    StoreError::BucketAlreadyExists(name.into())
                });
            }
            tx.put(Table::Buckets, name.as_bytes(), &rec)
        })
    }

    pub fn bucket(&self, name: &str) -> Result<BucketRecord> {
        match self.inner.meta.get(Table::Buckets, name.as_bytes())? {
            Some(v) => model::decode(&v),
            None => Err(StoreError::NoSuchBucket(name.into())),
        }
    }

    pub fn list_buckets(&self) -> Result<Vec<(String, BucketRecord)>> {
        let mut out = Vec::new();
        meta::for_each(&*self.inner.meta, Table::Buckets, b"", |k, v| {
            out.push((String::from_utf8_lossy(k).into_owned(), model::decode(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Delete an empty bucket. Multipart uploads still open in it are aborted.
    pub fn delete_bucket(&self, name: &str) -> Result<()> {
        self.bucket(name)?;
        for (upload_id, _) in self.list_uploads(name, "")? {
            self.abort_upload(&upload_id)?;
        }
        let prefix = model::object_key(name, "");
        // Exclusive: no manifest may commit into the bucket between the
        // emptiness check and the delete. Bucket deletion is rare.
        let _paused = self.inner.commit_lock.write();
        if !self
            .inner
            .meta
            .scan(Table::Objects, &prefix, &prefix, 1)?
            .is_empty()
        {
            return Err(StoreError::BucketNotEmpty(name.into()));
        }
        self.inner.meta.write(&mut |tx| {
            tx.delete(Table::BucketOptions, name.as_bytes())?;
            tx.delete(Table::Buckets, name.as_bytes())
        })
    }

    // ---- objects -----------------------------------------------------------

    /// Start writing an object or a multipart part. Bytes go in with
    /// `ObjectWriter::write`; nothing is visible until `finish`.
    pub fn writer(&self, target: Target, chunking: ProfileChoice) -> Result<ObjectWriter> {
        match &target {
            Target::Object { bucket, key, .. } => {
                check_key(key)?;
                self.bucket(bucket)?;
            }
            Target::Part { upload_id, part } => {
                if !(1..=10_000).contains(part) {
                    return Err(StoreError::InvalidArgument(
                        "part numbers run from 1 to 10000".into(),
                    ));
                }
                self.upload(upload_id)?;
            }
        }
        Ok(ObjectWriter::new(self.clone(), target, chunking))
    }

    /// Store a whole object from a reader (the CLI's path).
    pub fn put_reader(
        &self,
        bucket: &str,
        key: &str,
        mut src: impl Read,
        chunking: ProfileChoice,
        attrs: Vec<u8>,
        mut progress: impl FnMut(u64),
    ) -> Result<Committed> {
        let target = Target::Object {
            bucket: bucket.into(),
            key: key.into(),
            precondition: Precondition::None,
        };
        let mut w = self.writer(target, chunking)?;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let mut filled = 0;
            while filled < buf.len() {
                match src.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(StoreError::Aborted(format!("reading the source: {e}"))),
                }
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            w.write(Bytes::from(buf))?;
            progress(filled as u64);
        }
        w.finish(attrs, None)
    }

    pub fn head(&self, bucket: &str, key: &str) -> Result<ObjectRecord> {
        match self
            .inner
            .meta
            .get(Table::Objects, &model::object_key(bucket, key))?
        {
            Some(v) => model::decode(&v),
            None => {
                self.bucket(bucket)?;
                Err(StoreError::NoSuchKey {
                    bucket: bucket.into(),
                    key: key.into(),
                })
            }
        }
    }

    pub fn manifest(&self, bucket: &str, key: &str) -> Result<(ObjectRecord, Vec<ManifestEntry>)> {
        let okey = model::object_key(bucket, key);
        // Record and manifest are written in one transaction but read in two;
        // retry if an overwrite slipped between the reads.
        for _ in 0..8 {
            let rec = self.head(bucket, key)?;
            let Some(m) = self.inner.meta.get(Table::Manifests, &okey)? else {
                continue;
            };
            let m: model::Manifest = model::decode(&m)?;
            if m.etag == rec.etag && m.modified_ms == rec.modified_ms {
                return Ok((rec, m.chunks));
            }
        }
        Err(StoreError::Meta(format!(
            "manifest of {bucket}/{key} keeps changing"
        )))
    }

    /// Read an object, or the byte range `range` of it.
    pub fn read(
        &self,
        bucket: &str,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<ObjectReader> {
        let (rec, layout) = self.layout(bucket, key)?;
        let range = range.unwrap_or(0..rec.size);
        if range.start > range.end || range.end > rec.size {
            return Err(StoreError::InvalidRange {
                start: range.start,
                end: range.end,
                size: rec.size,
            });
        }
        Ok(ObjectReader::new(
            self.clone(),
            format!("{bucket}/{key}"),
            rec,
            layout,
            range,
        ))
    }

    /// The object's record and chunk layout, from the layout cache when the
    /// cached copy belongs to the current version of the object. Ranged
    /// reads of a large object (many small GETs, as Hadoop does) then cost a
    /// record lookup and a binary search instead of decoding the manifest.
    fn layout(&self, bucket: &str, key: &str) -> Result<(ObjectRecord, Arc<reader::Layout>)> {
        let okey = model::object_key(bucket, key);
        let rec = self.head(bucket, key)?;
        if let Some(l) = self.inner.layouts.lock().get(&okey, &rec) {
            return Ok((rec, l));
        }
        let (rec, chunks) = self.manifest(bucket, key)?;
        let layout = Arc::new(reader::Layout::new(chunks));
        self.inner.layouts.lock().insert(okey, &rec, layout.clone());
        Ok((rec, layout))
    }

    pub fn delete_object(&self, bucket: &str, key: &str) -> Result<()> {
        self.bucket(bucket)?;
        let okey = model::object_key(bucket, key);
        let now = now_ms();
        let _c = self.inner.commit_lock.read();
        self.inner.meta.write(&mut |tx| {
            let mut deltas = RefDeltas::default();
            if let Some(m) = tx.get(Table::Manifests, &okey)? {
                let m: model::Manifest = model::decode(&m)?;
                deltas.sub(&m.chunks);
            }
            tx.delete(Table::Objects, &okey)?;
            tx.delete(Table::Manifests, &okey)?;
            tx.delete(Table::ObjectParts, &okey)?;
            deltas.apply(tx, now)
        })
    }

    /// Server-side copy: the new object shares the source's chunks; no data
    /// moves. `attrs` replaces the source's attributes when given.
    pub fn copy_object(
        &self,
        src: (&str, &str),
        dst: (&str, &str),
        attrs: Option<Vec<u8>>,
        precondition: &Precondition,
    ) -> Result<ObjectRecord> {
        check_key(dst.1)?;
        self.bucket(dst.0)?;
        let (src_rec, chunks) = self.manifest(src.0, src.1)?;
        let dkey = model::object_key(dst.0, dst.1);
        let skey = model::object_key(src.0, src.1);
        let now = now_ms();
        let rec = ObjectRecord {
            modified_ms: now,
            attrs: attrs.unwrap_or_else(|| src_rec.attrs.clone()),
            ..src_rec.clone()
        };
        let _c = self.inner.commit_lock.read();
        self.inner.meta.write(&mut |tx| {
            if tx.get(Table::Buckets, dst.0.as_bytes())?.is_none() {
                return Err(StoreError::NoSuchBucket(dst.0.into()));
            }
            let mut deltas = RefDeltas::default();
            deltas.add(&chunks);
            replace_object(tx, &dkey, &rec, &chunks, precondition, &mut deltas)?;
            // The copy has the source's ETag and parts, so its part
            // boundaries too (when they belong to this version of the source).
            if let Some(v) = tx.get(Table::ObjectParts, &skey)? {
                let mut layout: model::ObjectParts = model::decode(&v)?;
                if layout.etag == src_rec.etag && layout.modified_ms == src_rec.modified_ms {
                    layout.modified_ms = rec.modified_ms;
                    tx.put(Table::ObjectParts, &dkey, &model::encode(&layout)?)?;
                }
            }
            deltas.apply(tx, now)
        })?;
        drop(_c);
        self.index_if_enabled(dst.0, dst.1);
        Ok(rec)
    }

    /// Up to `limit` objects of `bucket` whose key starts with `prefix` and
    /// sorts after `start_after`, in byte order; and whether more follow.
    pub fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, ObjectRecord)>, bool)> {
        self.bucket(bucket)?;
        let full_prefix = model::object_key(bucket, prefix);
        let start = match start_after {
            Some(s) => {
                let mut k = model::object_key(bucket, s);
                k.push(0);
                k
            }
            None => full_prefix.clone(),
        };
        let page = self.inner.meta.scan(
            Table::Objects,
            &full_prefix,
            &start,
            limit.saturating_add(1),
        )?;
        let more = page.len() > limit;
        let skip = bucket.len() + 1;
        let out = page
            .into_iter()
            .take(limit)
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(&k[skip..]).into_owned(),
                    model::decode(&v)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((out, more))
    }

    // ---- multipart ---------------------------------------------------------

    pub fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        attrs: Vec<u8>,
        chunking: ProfileChoice,
    ) -> Result<String> {
        check_key(key)?;
        self.bucket(bucket)?;
        let upload_id = {
            use rand::RngCore;
            let mut b = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        };
        let rec = model::encode(&UploadRecord {
            bucket: bucket.into(),
            key: key.into(),
            initiated_ms: now_ms(),
            attrs,
            chunking: chunking.to_string(),
        })?;
        self.inner
            .meta
            .write(&mut |tx| tx.put(Table::Uploads, upload_id.as_bytes(), &rec))?;
        Ok(upload_id)
    }

    pub fn upload(&self, upload_id: &str) -> Result<UploadRecord> {
        match self.inner.meta.get(Table::Uploads, upload_id.as_bytes())? {
            Some(v) => model::decode(&v),
            None => Err(StoreError::NoSuchUpload(upload_id.into())),
        }
    }

    pub fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<(String, UploadRecord)>> {
        let mut out = Vec::new();
        meta::for_each(&*self.inner.meta, Table::Uploads, b"", |k, v| {
            let rec: UploadRecord = model::decode(v)?;
            if rec.bucket == bucket && rec.key.starts_with(prefix) {
                out.push((String::from_utf8_lossy(k).into_owned(), rec));
            }
            Ok(())
        })?;
        out.sort_by(|a, b| (&a.1.key, a.1.initiated_ms).cmp(&(&b.1.key, b.1.initiated_ms)));
        Ok(out)
    }

    pub fn list_parts(&self, upload_id: &str) -> Result<Vec<(u32, PartRecord)>> {
        self.upload(upload_id)?;
        let mut prefix = upload_id.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        meta::for_each(&*self.inner.meta, Table::Parts, &prefix, |k, v| {
            let n = k[prefix.len()..]
                .try_into()
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            out.push((n, model::decode(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Assemble the listed parts into the object. Parts not listed are dropped.
    pub fn complete_upload(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        precondition: &Precondition,
    ) -> Result<ObjectRecord> {
        self.complete_upload_with(upload_id, parts, precondition, None)
    }

    /// [`Store::complete_upload`], with the object's attributes replaced by
    /// `attrs` when given (the S3 layer adds the multipart checksum it
    /// computed from the parts). The part sizes and attributes are kept in
    /// `Table::ObjectParts` with the object, in the same transaction.
    ///
    /// The parts are read again inside the commit transaction, so a part
    /// re-uploaded meanwhile either still has the listed ETag or fails the
    /// completion with `InvalidPart`; reference counts always follow what is
    /// actually committed.
    pub fn complete_upload_with(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        precondition: &Precondition,
        attrs: Option<Vec<u8>>,
    ) -> Result<ObjectRecord> {
        let upload = self.upload(upload_id)?;
        if parts.is_empty() {
            return Err(StoreError::InvalidPart(
                "a multipart upload needs at least one part".into(),
            ));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(StoreError::InvalidPartOrder);
        }
        // Which parts exist; their contents are re-read in the transaction.
        let stored: Vec<u32> = self
            .list_parts(upload_id)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let min_part = self.inner.cfg.min_part_size;
        let attrs = attrs.unwrap_or_else(|| upload.attrs.clone());
        let now = now_ms();
        let okey = model::object_key(&upload.bucket, &upload.key);
        let mut committed: Option<ObjectRecord> = None;
        let _c = self.inner.commit_lock.read();
        self.inner.meta.write(&mut |tx| {
            if tx.get(Table::Uploads, upload_id.as_bytes())?.is_none() {
                return Err(StoreError::NoSuchUpload(upload_id.into()));
            }
            if tx.get(Table::Buckets, upload.bucket.as_bytes())?.is_none() {
                return Err(StoreError::NoSuchBucket(upload.bucket.clone()));
            }
            let mut deltas = RefDeltas::default();
            let mut chunks = Vec::new();
            let mut md5s = Vec::with_capacity(parts.len() * 16);
            let mut size = 0u64;
            let mut profiles: Vec<String> = Vec::new();
            let mut layout = Vec::with_capacity(parts.len());
            for (i, (n, etag)) in parts.iter().enumerate() {
                let pkey = model::part_key(upload_id, *n);
                let Some(v) = tx.get(Table::Parts, &pkey)? else {
                    return Err(StoreError::InvalidPart(format!(
                        "part {n} was not uploaded"
                    )));
                };
                let p: PartRecord = model::decode(&v)?;
                let want = etag.trim().trim_matches('"').to_ascii_lowercase();
                if want != hex::encode(p.md5) {
                    return Err(StoreError::InvalidPart(format!(
                        "part {n}'s ETag does not match {etag}"
                    )));
                }
                if i + 1 < parts.len() && p.size < min_part {
                    return Err(StoreError::EntityTooSmall {
                        part: *n,
                        size: p.size,
                        min: min_part,
                    });
                }
                let part_attrs = match tx.get(Table::PartAttrs, &pkey)? {
                    Some(v) => {
                        let a: model::PartAttrsRecord = model::decode(&v)?;
                        if a.md5 == p.md5 && a.modified_ms == p.modified_ms {
                            a.attrs
                        } else {
                            Vec::new()
                        }
                    }
                    None => Vec::new(),
                };
                layout.push(model::ObjectPart {
                    size: p.size,
                    attrs: part_attrs,
                });
                chunks.extend_from_slice(&p.chunks);
                md5s.extend_from_slice(&p.md5);
                size += p.size;
                if !profiles.contains(&p.profile) {
                    profiles.push(p.profile.clone());
                }
            }
            let etag = {
                use md5::Digest;
                format!("{}-{}", hex::encode(md5::Md5::digest(&md5s)), parts.len())
            };
            let rec = ObjectRecord {
                size,
                etag,
                modified_ms: now,
                profile: profiles.join(","),
                attrs: attrs.clone(),
                parts: parts.len() as u32,
            };
            deltas.add(&chunks);
            for n in &stored {
                let pkey = model::part_key(upload_id, *n);
                if let Some(v) = tx.get(Table::Parts, &pkey)? {
                    let p: PartRecord = model::decode(&v)?;
                    deltas.sub(&p.chunks);
                    tx.delete(Table::Parts, &pkey)?;
                }
                tx.delete(Table::PartAttrs, &pkey)?;
            }
            tx.delete(Table::Uploads, upload_id.as_bytes())?;
            replace_object(tx, &okey, &rec, &chunks, precondition, &mut deltas)?;
            let layout = model::ObjectParts {
                etag: rec.etag.clone(),
                modified_ms: rec.modified_ms,
                parts: layout,
            };
            tx.put(Table::ObjectParts, &okey, &model::encode(&layout)?)?;
            committed = Some(rec);
            deltas.apply(tx, now)
        })?;
        drop(_c);
        let rec = committed.ok_or_else(|| StoreError::Meta("completion did not run".into()))?;
        self.index_if_enabled(&upload.bucket, &upload.key);
        Ok(rec)
    }

    pub fn abort_upload(&self, upload_id: &str) -> Result<()> {
        let parts = self.list_parts(upload_id)?;
        let now = now_ms();
        let _c = self.inner.commit_lock.read();
        self.inner.meta.write(&mut |tx| {
            let mut deltas = RefDeltas::default();
            for (n, _) in &parts {
                let pkey = model::part_key(upload_id, *n);
                // Re-read inside the transaction: a part may have been replaced.
                if let Some(v) = tx.get(Table::Parts, &pkey)? {
                    let p: PartRecord = model::decode(&v)?;
                    deltas.sub(&p.chunks);
                    tx.delete(Table::Parts, &pkey)?;
                }
                tx.delete(Table::PartAttrs, &pkey)?;
            }
            tx.delete(Table::Uploads, upload_id.as_bytes())?;
            deltas.apply(tx, now)
        })
    }

    // ---- chunks ------------------------------------------------------------

    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        if self.shared().is_some() && !id.is_zero_run() {
            // An unreachable metadata store answers "not here": callers
            // then fetch or send the chunk, which fails with the real error.
            return matches!(self.shared_lookup(&[*id]).as_deref(), Ok([Some(_)]));
        }
        id.is_zero_run() || self.inner.index.get(id).is_some()
    }

    /// Read one chunk by id, verified against the id when configured.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Bytes> {
        self.read_chunk_as(id, &format!("chunk {id}"), self.inner.cfg.verify_reads)
    }

    pub(crate) fn read_chunk_as(&self, id: &ChunkId, object: &str, verify: bool) -> Result<Bytes> {
        if self.shared().is_some() {
            let mut one = self.shared_read_chunks(&[*id], object)?;
            return one.pop().ok_or(StoreError::MissingChunk(*id));
        }
        // Compaction may move a chunk between our index lookup and the
        // segment lookup; the retry finds it at its new place.
        for _ in 0..4 {
            let Some(loc) = self.inner.index.get(id) else {
                return Err(StoreError::MissingChunk(*id));
            };
            let Some(seg) = self.inner.segments.read().get(&loc.segment).cloned() else {
                continue;
            };
            let data = match seg.read_record(loc.offset, id, loc.len) {
                Ok(d) => d,
                Err(StoreError::CorruptSegment { what, .. }) => {
                    return Err(StoreError::Integrity {
                        object: object.into(),
                        chunk: *id,
                        what,
                    })
                }
                Err(e) => return Err(e),
            };
            if verify && ChunkId::of(&data) != *id {
                return Err(StoreError::Integrity {
                    object: object.into(),
                    chunk: *id,
                    what: format!(
                        "has bytes that do not match its id (segment {}, offset {})",
                        seg.path.display(),
                        loc.offset
                    ),
                });
            }
            return Ok(data);
        }
        Err(StoreError::MissingChunk(*id))
    }

    /// Read many chunks: runs of records lying next to each other in one
    /// segment (the usual case for an object written in one go) are read
    /// with one system call, and chunks are verified on all cores.
    pub(crate) fn read_chunks(
        &self,
        ids: &[ChunkId],
        object: &str,
        verify: bool,
    ) -> Result<Vec<Bytes>> {
        use rayon::prelude::*;
        if self.shared().is_some() {
            return self.shared_read_chunks(ids, object);
        }
        let locs: Vec<Option<Loc>> = ids.iter().map(|id| self.inner.index.get(id)).collect();
        let mut out: Vec<Option<Bytes>> = vec![None; ids.len()];
        let mut i = 0;
        while i < ids.len() {
            let Some(first) = locs[i] else {
                i += 1;
                continue;
            };
            let mut j = i + 1;
            let mut end = first.offset + segment::RECORD_HEADER_LEN + first.len as u64;
            while let Some(Some(l)) = locs.get(j) {
                if l.segment != first.segment || l.offset != end {
                    break;
                }
                end += segment::RECORD_HEADER_LEN + l.len as u64;
                j += 1;
            }
            let seg = self.inner.segments.read().get(&first.segment).cloned();
            if let Some(seg) = seg {
                let run: Vec<(ChunkId, u32)> = (i..j)
                    .map(|k| (ids[k], locs[k].map(|l| l.len).unwrap_or(0)))
                    .collect();
                // On any trouble (moved by compaction, damaged header) the
                // per-chunk path below retries and reports precisely.
                if let Ok(datas) = seg.read_run(first.offset, &run) {
                    for (k, d) in (i..j).zip(datas) {
                        out[k] = Some(d);
                    }
                }
            }
            i = j;
        }
        if verify {
            let bad: Vec<usize> = out
                .par_iter()
                .enumerate()
                .filter_map(|(k, d)| match d {
                    Some(d) if ChunkId::of(d) != ids[k] => Some(k),
                    _ => None,
                })
                .collect();
            for k in bad {
                out[k] = None; // re-read singly: that path names the damage
            }
        }
        out.into_iter()
            .zip(ids)
            .map(|(d, id)| match d {
                Some(d) => Ok(d),
                None => self.read_chunk_as(id, object, verify),
            })
            .collect()
    }

    /// Store one chunk received by id (chunk API, pulls, migrations). The
    /// bytes must hash to `id`. Durable when this returns; unreferenced until
    /// a manifest names it (GC reclaims it after the grace period otherwise).
    /// Returns false if the chunk was already stored.
    pub fn put_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<bool> {
        self.put_chunk_with(id, data, true)
    }

    /// Like `put_chunk`, without waiting for the data to reach the disk.
    /// For callers that commit a manifest afterwards (pull, chain, caches):
    /// `commit_manifest` makes every chunk it references durable first, so
    /// one sync per segment replaces one per chunk.
    pub fn put_chunk_unsynced(&self, id: &ChunkId, data: &[u8]) -> Result<bool> {
        self.put_chunk_with(id, data, false)
    }

    /// Store many chunks received by id, durable when this returns, with
    /// one sync per segment touched instead of one per chunk (migrations
    /// send 4 KiB pages by the thousand). Every chunk is checked against its
    /// id first; on a mismatch nothing is stored. Returns how many were new.
    pub fn put_chunks(&self, chunks: &[(ChunkId, Bytes)]) -> Result<usize> {
        use rayon::prelude::*;
        if let Some((id, _)) = chunks.par_iter().find_any(|(id, d)| ChunkId::of(d) != *id) {
            return Err(mismatched_upload(id));
        }
        if self.shared().is_some() {
            return self.shared_put_chunks(chunks);
        }
        let mut new = 0;
        for (id, data) in chunks {
            if self.append_checked(id, data, false)? {
                new += 1;
            }
        }
        let mut ends: HashMap<u32, Loc> = HashMap::new();
        for (id, _) in chunks {
            if let Some(loc) = self.inner.index.get(id) {
                let e = ends.entry(loc.segment).or_insert(loc);
                if loc.offset > e.offset {
                    *e = loc;
                }
            }
        }
        for loc in ends.into_values() {
            self.sync_loc(loc)?;
        }
        Ok(new)
    }

    fn put_chunk_with(&self, id: &ChunkId, data: &[u8], durable: bool) -> Result<bool> {
        if ChunkId::of(data) != *id {
            return Err(mismatched_upload(id));
        }
        if self.shared().is_some() {
            // Uploaded (durable) either way: an object PUT is the unit.
            return self
                .shared_put_chunks(&[(*id, Bytes::copy_from_slice(data))])
                .map(|n| n > 0);
        }
        self.append_checked(id, data, durable)
    }

    /// Store a chunk whose bytes the caller has checked against `id`.
    fn append_checked(&self, id: &ChunkId, data: &[u8], durable: bool) -> Result<bool> {
        if let Some(loc) = self.inner.index.pin_lookup(id) {
            let r = if durable { self.sync_loc(loc) } else { Ok(()) };
            self.inner.index.unpin_all([id]);
            return r.map(|_| false);
        }
        let result = (|| {
            let mut app = self.take_appender()?;
            let rec = app.append(id, data);
            let flushed = app.flush();
            let seg = app.segment().clone();
            let end = app.end_offset();
            if flushed.is_ok() {
                self.inner.index.insert_many([(
                    *id,
                    Loc {
                        segment: seg.id,
                        len: rec.len,
                        offset: rec.offset,
                    },
                )]);
            }
            self.return_appender(app);
            flushed?;
            if durable {
                seg.sync_to(end)?;
            }
            Ok(())
        })();
        self.inner.index.unpin_all([id]);
        result.map(|_| true)
    }

    fn sync_loc(&self, loc: Loc) -> Result<()> {
        let seg = self.inner.segments.read().get(&loc.segment).cloned();
        match seg {
            Some(seg) => seg.sync_to(loc.offset + segment::RECORD_HEADER_LEN + loc.len as u64),
            None => Ok(()),
        }
    }

    /// Commit an object whose chunks are already stored (a pulled or
    /// propagated image, a migrated memory image): the manifest and its
    /// reference counts, atomically, once every chunk is present and durable.
    pub fn commit_manifest(
        &self,
        bucket: &str,
        key: &str,
        record: ObjectRecord,
        chunks: &[ManifestEntry],
        precondition: &Precondition,
    ) -> Result<ObjectRecord> {
        check_key(key)?;
        let size: u64 = chunks.iter().map(|c| c.len as u64).sum();
        if size != record.size {
            return Err(StoreError::InvalidArgument(format!(
                "manifest covers {size} bytes, the record says {}",
                record.size
            )));
        }
        if self.shared().is_some() {
            let stored: Vec<&ManifestEntry> =
                chunks.iter().filter(|c| !c.id.is_zero_run()).collect();
            let ids: Vec<ChunkId> = stored.iter().map(|c| c.id).collect();
            for (c, loc) in stored.iter().zip(self.shared_lookup(&ids)?) {
                match loc {
                    Some(l) if l.len == c.len => {}
                    Some(_) => {
                        return Err(StoreError::InvalidArgument(format!(
                            "chunk {} has another length",
                            c.id
                        )))
                    }
                    None => return Err(StoreError::MissingChunk(c.id)),
                }
            }
        }
        let mut pinned = Vec::new();
        let result = (|| {
            for c in chunks
                .iter()
                .filter(|c| !c.id.is_zero_run() && self.shared().is_none())
            {
                pinned.push(c.id);
                match self.inner.index.pin_lookup(&c.id) {
                    Some(loc) if loc.len == c.len => self.sync_loc(loc)?,
                    Some(_) => {
                        return Err(StoreError::InvalidArgument(format!(
                            "chunk {} has another length",
                            c.id
                        )))
                    }
                    None => return Err(StoreError::MissingChunk(c.id)),
                }
            }
            let okey = model::object_key(bucket, key);
            let now = now_ms();
            let rec = ObjectRecord {
                modified_ms: now,
                ..record.clone()
            };
            let _c = self.inner.commit_lock.read();
            self.inner.meta.write(&mut |tx| {
                if tx.get(Table::Buckets, bucket.as_bytes())?.is_none() {
                    return Err(StoreError::NoSuchBucket(bucket.into()));
                }
                let mut deltas = RefDeltas::default();
                deltas.add(chunks);
                replace_object(tx, &okey, &rec, chunks, precondition, &mut deltas)?;
                deltas.apply(tx, now)
            })?;
            Ok(rec)
        })();
        self.inner.index.unpin_all(pinned.iter());
        if result.is_ok() {
            self.index_if_enabled(bucket, key);
        }
        result
    }

    /// Commit `bucket/key` from chunks the store holds, with what the caller
    /// knows of the object (chain, multicast, pull and the chunk API all
    /// commit this way). `meta.size` must be what the chunks cover.
    pub fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        meta: ObjectMeta,
        chunks: &[ManifestEntry],
    ) -> Result<ObjectRecord> {
        let record = ObjectRecord {
            size: meta.size,
            etag: meta.etag,
            modified_ms: 0,
            profile: meta.profile,
            attrs: Vec::new(),
            parts: meta.parts,
        };
        self.commit_manifest(bucket, key, record, chunks, &Precondition::None)
    }

    /// Commit `bucket/key` from chunks the store holds when the caller has
    /// no ETag: every chunk is read back (verified) to compute the MD5 ETag
    /// S3 clients check; a missing chunk or a wrong length fails the commit
    /// and changes nothing.
    pub fn commit_held_chunks(
        &self,
        bucket: &str,
        key: &str,
        profile: &str,
        chunks: &[ManifestEntry],
    ) -> Result<ObjectRecord> {
        use md5::{Digest, Md5};
        let mut md5 = Md5::new();
        let mut size = 0u64;
        for c in chunks {
            if c.id.is_zero_run() {
                md5.update(vec![0u8; c.len as usize]);
            } else {
                let data = self.read_chunk(&c.id)?;
                if data.len() != c.len as usize {
                    return Err(StoreError::InvalidArgument(format!(
                        "chunk {} is {} bytes, not {}",
                        c.id,
                        data.len(),
                        c.len
                    )));
                }
                md5.update(&data);
            }
            size += c.len as u64;
        }
        let meta = ObjectMeta {
            size,
            etag: hex::encode(md5.finalize()),
            profile: profile.to_string(),
            parts: 0,
        };
        self.commit_object(bucket, key, meta, chunks)
    }

    pub fn chunk_count(&self) -> usize {
        self.inner.index.len()
    }

    // ---- internals used by writer / gc -------------------------------------

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    fn take_appender(&self) -> Result<SegmentAppender> {
        if let Some(app) = self.inner.pool.lock().pop() {
            return Ok(app);
        }
        let id = self.inner.next_segment.fetch_add(1, Ordering::SeqCst);
        let app = SegmentAppender::create(&self.inner.seg_dir, id)?;
        self.inner
            .segments
            .write()
            .insert(id, app.segment().clone());
        Ok(app)
    }

    fn return_appender(&self, app: SegmentAppender) {
        self.inner.pool.lock().push(app);
    }

    /// Seal the segments idle in the pool (GC compacts only sealed ones).
    pub fn seal_idle_segments(&self) -> Result<()> {
        let apps: Vec<_> = self.inner.pool.lock().drain(..).collect();
        for app in apps {
            app.seal()?;
        }
        Ok(())
    }

    fn register_inflight(&self) -> u64 {
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        self.inner.inflight.lock().insert(token, now_ms());
        token
    }

    fn unregister_inflight(&self, token: u64) {
        self.inner.inflight.lock().remove(&token);
    }

    /// Start time of the oldest write in flight, if any.
    pub fn oldest_inflight_ms(&self) -> Option<u64> {
        self.inner.inflight.lock().values().min().copied()
    }
}

/// Recently read manifests, bounded by their total number of entries.
/// Entries are keyed by object and checked against the object's current
/// ETag and modification time, so an overwritten object is never served
/// from a stale layout.
#[derive(Default)]
struct LayoutCache {
    map: HashMap<Vec<u8>, (String, u64, Arc<reader::Layout>)>,
    order: std::collections::VecDeque<Vec<u8>>,
    entries: usize,
}

impl LayoutCache {
    /// About 44 bytes per entry: ~45 MB at most.
    const MAX_ENTRIES: usize = 1 << 20;

    fn get(&self, okey: &[u8], rec: &ObjectRecord) -> Option<Arc<reader::Layout>> {
        match self.map.get(okey) {
            Some((etag, modified, l)) if *etag == rec.etag && *modified == rec.modified_ms => {
                Some(l.clone())
            }
            _ => None,
        }
    }

    fn insert(&mut self, okey: Vec<u8>, rec: &ObjectRecord, layout: Arc<reader::Layout>) {
        let n = layout.chunks.len();
        if n > Self::MAX_ENTRIES / 4 {
            return; // huge manifests are not worth evicting everything for
        }
        if let Some((_, _, old)) = self.map.remove(&okey) {
            self.entries -= old.chunks.len();
            self.order.retain(|k| *k != okey);
        }
        while self.entries + n > Self::MAX_ENTRIES {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some((_, _, old)) = self.map.remove(&k) {
                self.entries -= old.chunks.len();
            }
        }
        self.entries += n;
        self.order.push_back(okey.clone());
        self.map
            .insert(okey, (rec.etag.clone(), rec.modified_ms, layout));
    }
}

fn check_format(dir: &Path) -> Result<()> {
    let path = dir.join("FORMAT");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim() == FORMAT => Ok(()),
        Ok(s) => Err(StoreError::Format {
            path,
            found: s.trim().to_string(),
            expected: FORMAT.into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut f = File::create(&path).at(&path)?;
            writeln!(f, "{FORMAT}").at(&path)?;
            f.sync_all().at(&path)?;
            segment::sync_dir(dir)
        }
        Err(e) => Err(e).at(&path),
    }
}

/// Net reference-count changes of one transaction, applied at its end so each
/// chunk's state is read and written once however often it appears.
#[derive(Default)]
pub(crate) struct RefDeltas {
    map: HashMap<ChunkId, (i64, u32), id::BuildIdHasher>,
}

impl RefDeltas {
    pub fn add(&mut self, chunks: &[ManifestEntry]) {
        self.change(chunks, 1)
    }
    pub fn sub(&mut self, chunks: &[ManifestEntry]) {
        self.change(chunks, -1)
    }
    fn change(&mut self, chunks: &[ManifestEntry], by: i64) {
        for c in chunks.iter().filter(|c| !c.id.is_zero_run()) {
            let e = self.map.entry(c.id).or_insert((0, c.len));
            e.0 += by;
        }
    }

    pub fn apply(&self, tx: &mut dyn MetaTxn, now: u64) -> Result<()> {
        for (id, (delta, len)) in &self.map {
            if *delta == 0 {
                continue;
            }
            let old = match tx.get(Table::Chunks, &id.0)? {
                Some(v) => model::decode::<model::ChunkState>(&v)?,
                None => model::ChunkState {
                    refs: 0,
                    len: *len,
                    zero_since_ms: 0,
                },
            };
            let refs = old.refs as i64 + delta;
            if refs < 0 {
                // Only a damaged reference count can get here; the audit in GC
                // recomputes it from manifests.
                tracing::error!(chunk = %id, "reference count would drop below zero");
            }
            let refs = refs.max(0) as u64;
            let state = model::ChunkState {
                refs,
                len: *len,
                zero_since_ms: if refs == 0 { now } else { 0 },
            };
            tx.put(Table::Chunks, &id.0, &model::encode(&state)?)?;
        }
        Ok(())
    }
}

/// Put `rec` + `chunks` at `okey` (bucket\0key), checking the precondition
/// against what is there and releasing the old manifest's references.
pub(crate) fn replace_object(
    tx: &mut dyn MetaTxn,
    okey: &[u8],
    rec: &ObjectRecord,
    chunks: &[ManifestEntry],
    precondition: &Precondition,
    deltas: &mut RefDeltas,
) -> Result<()> {
    let old: Option<ObjectRecord> = tx
        .get(Table::Objects, okey)?
        .map(|v| model::decode(&v))
        .transpose()?;
    let (bucket, key) = model::split_object_key(okey);
    precondition.check(old.as_ref().map(|o| o.etag.as_str()), &bucket, &key)?;
    if old.is_some() {
        if let Some(m) = tx.get(Table::Manifests, okey)? {
            let m: model::Manifest = model::decode(&m)?;
            deltas.sub(&m.chunks);
        }
    }
    tx.put(Table::Objects, okey, &model::encode(rec)?)?;
    // Part boundaries belong to the version they were written with; a
    // multipart completion puts the new ones after this.
    tx.delete(Table::ObjectParts, okey)?;
    let manifest = model::Manifest {
        etag: rec.etag.clone(),
        modified_ms: rec.modified_ms,
        chunks: chunks.to_vec(),
    };
    tx.put(Table::Manifests, okey, &model::encode(&manifest)?)
}

/// How long GC waits before reclaiming a chunk whose references dropped to zero.
pub fn default_grace() -> Duration {
    Duration::from_secs(15 * 60)
}

#[cfg(test)]
mod tests;

/// A chunk received by id whose bytes hash to something else.
fn mismatched_upload(id: &ChunkId) -> StoreError {
    StoreError::Integrity {
        object: "uploaded chunk".into(),
        chunk: *id,
        what: "has bytes that do not match its id".into(),
    }
}
