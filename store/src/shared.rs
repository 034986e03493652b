//! Shared mode: segments in an S3-compatible object store, the chunk index
//! in the metadata store, so any number of frontends over one metadata
//! database and one bucket see (and deduplicate against) each other's chunks.
//!
//! ```text
//! BUCKET/PREFIX/FORMAT                 "strato-store 1"
//! BUCKET/PREFIX/segments/<id>.seg      (id: 32 hex digits) one sealed segment (segment.rs format), immutable
//! meta Table::ChunkLocs  chunk id -> segment id:u128 offset:u64 len:u32  (little-endian)
//! meta Table::Inflight   segment id (big endian) -> heartbeat ms (u64 LE): uploaded, not yet committed
//! DATA/staging/<id>.seg                a segment being written (never referenced)
//! DATA/cache/                          chunk read cache (cache.rs), disposable
//! ```
//!
//! Durability in shared mode: a writer appends its new chunks to a private
//! staging segment, seals it and uploads it as one object (one PUT, or a
//! multipart upload above the part size) and only after the object store
//! acknowledged it commits, in ONE metadata transaction, the manifest, the
//! reference counts and the new chunks' locations. A location row therefore
//! always names a durable object, and a failed upload commits nothing. The
//! staging file is deleted once uploaded: an acknowledged PUT needs no
//! local state. A crash before the commit leaves an object nothing points at
//! (an orphan, which shared-mode GC reclaims: shared_gc.rs).
//!
//! In-flight registrations make that reclaim race-free across frontends. A
//! writer registers each segment in Table::Inflight before uploading it and
//! refreshes the registrations of its uploaded segments every HEARTBEAT
//! while its stream runs; the commit transaction requires every new
//! location's segment to be still registered and removes the registration.
//! GC deletes an unreferenced segment object only after removing its
//! registration (if any) once its heartbeat is older than the grace period.
//! Whichever transaction comes second loses: a late commit fails (the
//! client's PUT errors, nothing acknowledged), or GC skips the object. A
//! heartbeat refresh never recreates a registration GC removed.
//!
//! Segment ids are random 128-bit numbers, drawn per segment from the
//! OS-seeded generator. A counter in the metadata store would cost a write
//! transaction (a PostgreSQL round trip, serialised against every other
//! frontend's) per segment, and would rely on the engine's isolation level
//! never to hand a number out twice. 64 random bits would not be enough: by
//! the birthday bound (n^2 / 2^65) a petabyte in 16 MiB segments (6e7 of
//! them) collides with probability 1e-4, and a collision overwrites an
//! object. With 128 bits the same repository collides with probability
//! 1e-23, below the rate of undetected hardware errors.
//!
//! Two frontends ingesting the same new data at once both upload it; the
//! first commit's location wins and the other copy is a bounded duplicate
//! (at most what was in flight), left for GC.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::Mutex;

use super::cache::{CacheStats, ChunkCache};
use super::error::{IoContext, Result, StoreError};
use super::id::{BuildIdHasher, ChunkId};
use super::meta::{MetaStore, MetaTxn, Table};
use super::objstore::{Got, ObjectStore, S3Settings};
use super::segment::{self, SegmentAppender, RECORD_HEADER_LEN};
use super::Store;

/// Where one chunk's record lives: in segment object `segment`, its header
/// at `offset`, `len` bytes of data after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedLoc {
    pub segment: u128,
    pub offset: u64,
    pub len: u32,
}

impl SharedLoc {
    const LEN: usize = 28;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut v = [0u8; Self::LEN];
        v[0..16].copy_from_slice(&self.segment.to_le_bytes());
        v[16..24].copy_from_slice(&self.offset.to_le_bytes());
        v[24..28].copy_from_slice(&self.len.to_le_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Result<SharedLoc> {
        let bad = || {
            StoreError::Meta(format!(
                "a chunk location of {} bytes, not {}",
                v.len(),
                Self::LEN
            ))
        };
        if v.len() != Self::LEN {
            return Err(bad());
        }
        Ok(SharedLoc {
            segment: v[0..16]
                .try_into()
                .map(u128::from_le_bytes)
                .map_err(|_| bad())?,
            offset: v[16..24]
                .try_into()
                .map(u64::from_le_bytes)
                .map_err(|_| bad())?,
            len: v[24..28]
                .try_into()
                .map(u32::from_le_bytes)
                .map_err(|_| bad())?,
        })
    }

    fn record_end(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN + self.len as u64
    }
}

/// Positive lookups this frontend made, bounded. Locations never change in
/// shared mode today (no compaction), so a cached one cannot go stale.
#[derive(Default)]
struct LocCache {
    map: HashMap<ChunkId, SharedLoc, BuildIdHasher>,
}

impl LocCache {
    /// ~60 bytes an entry: ~60 MB at most.
    const MAX: usize = 1 << 20;

    fn insert(&mut self, id: ChunkId, loc: SharedLoc) {
        if self.map.len() >= Self::MAX {
            // Crude but bounded: the metadata store answers the misses.
            self.map.clear();
        }
        self.map.insert(id, loc);
    }
}

pub(crate) struct Shared {
    objects: ObjectStore,
    cache: Option<ChunkCache>,
    locs: Mutex<LocCache>,
    staging: PathBuf,
    settings: S3Settings,
}

/// The repository format marker kept in the bucket, next to the segments.
const FORMAT_KEY: &str = "FORMAT";

impl Shared {
    /// Connect, check the bucket and the repository's format marker (made
    /// in a new repository), clear staging files a crash left (nothing
    /// references them) and open the read cache.
    pub fn open(dir: &Path, s: &S3Settings, format: &str) -> Result<Shared> {
        let objects = ObjectStore::connect(s)?;
        objects.check_bucket()?;
        let key = objects.key(FORMAT_KEY);
        match objects.get_small(&key)? {
            Some(found) => {
                let found = String::from_utf8_lossy(&found).trim().to_string();
                if found != format {
                    return Err(StoreError::Format {
                        path: PathBuf::from(format!("{}/{FORMAT_KEY}", s.describe())),
                        found,
                        expected: format.into(),
                    });
                }
            }
            None => objects.put_small(&key, Bytes::from(format!("{format}\n")))?,
        }
        let staging = dir.join("staging");
        if staging.exists() {
            std::fs::remove_dir_all(&staging).at(&staging)?;
        }
        std::fs::create_dir_all(&staging).at(&staging)?;
        let cache = if s.cache_bytes > 0 {
            let cdir = s.cache_dir.clone().unwrap_or_else(|| dir.join("cache"));
            Some(ChunkCache::open(&cdir, s.cache_bytes)?)
        } else {
            None
        };
        Ok(Shared {
            objects,
            cache,
            locs: Mutex::new(LocCache::default()),
            staging,
            settings: s.clone(),
        })
    }

    pub fn describe(&self) -> String {
        let cache = match (&self.cache, self.settings.cache_bytes) {
            (Some(_), n) => format!(
                "read cache {} MiB in {}",
                n >> 20,
                self.settings
                    .cache_dir
                    .as_ref()
                    .map_or_else(|| "DATA/cache".into(), |d| d.display().to_string())
            ),
            (None, _) => "no read cache".into(),
        };
        format!("{} ({cache})", self.objects.name())
    }

    pub(crate) fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map(ChunkCache::stats)
            .unwrap_or_default()
    }

    fn remember(&self, found: impl IntoIterator<Item = (ChunkId, SharedLoc)>) {
        let mut g = self.locs.lock();
        for (id, loc) in found {
            g.insert(id, loc);
        }
    }
}

/// A data directory serves one segment backend for its life: in s3 mode
/// it must not hold local segments (their chunks would be invisible), and a
/// directory once used in s3 mode (marked by DATA/STORAGE) must not be
/// opened as a local store that would find no segments at all. A local
/// store's directory stays exactly as it always was (no marker).
pub(crate) fn check_data_dir(dir: &Path, seg_dir: &Path, s3: bool) -> Result<()> {
    let marker = dir.join("STORAGE");
    let marked = match std::fs::read_to_string(&marker) {
        Ok(s) => s.trim() == "s3",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).at(&marker),
    };
    if !s3 {
        if marked {
            return Err(StoreError::InvalidArgument(format!(
                "data directory {} belongs to a store with the s3 segment backend \
                 ([storage] backend = \"s3\"); its segments are not on this disk",
                dir.display()
            )));
        }
        return Ok(());
    }
    if !marked {
        let has_local = std::fs::read_dir(seg_dir)
            .at(seg_dir)?
            .filter_map(std::result::Result::ok)
            .any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(segment::parse_segment_file_name)
                    .is_some()
            });
        if has_local {
            return Err(StoreError::InvalidArgument(format!(
                "data directory {} holds local segments; it cannot be opened with the s3 \
                 segment backend",
                dir.display()
            )));
        }
        std::fs::write(&marker, "s3\n").at(&marker)?;
        segment::sync_dir(dir)?;
    }
    Ok(())
}

/// The metadata remembers which segment backend its repository uses
/// (Table::Misc `segment-backend`, written on first open): metadata shared
/// by frontends over an object store, opened by a command that forgot the
/// `[storage]` settings, would otherwise look like a local store whose
/// chunks are all missing, and its GC would act on that.
pub(crate) fn check_meta_backend(meta: &dyn MetaStore, s3: bool) -> Result<()> {
    const KEY: &[u8] = b"segment-backend";
    let want: &[u8] = if s3 { b"s3" } else { b"local" };
    match meta.get(Table::Misc, KEY)? {
        Some(v) if v == want => Ok(()),
        Some(v) => Err(StoreError::InvalidArgument(format!(
            "this metadata belongs to a repository with the {} segment backend; open it with \
             the same [storage] settings (--storage-backend, STRATO_STORAGE_BACKEND and the \
             STRATO_S3_* variables)",
            String::from_utf8_lossy(&v)
        ))),
        None => meta.write(&mut |tx| {
            // Two frontends opening a new repository at once: first one wins.
            match tx.get(Table::Misc, KEY)? {
                Some(v) if v != want => Err(StoreError::InvalidArgument(format!(
                    "this metadata belongs to a repository with the {} segment backend",
                    String::from_utf8_lossy(&v)
                ))),
                Some(_) => Ok(()),
                None => tx.put(Table::Misc, KEY, want),
            }
        }),
    }
}

/// Write the locations of newly uploaded chunks inside the manifest's
/// transaction. A location already there wins: both copies are durable,
/// and keeping the first keeps what other frontends cached valid. Every
/// segment named must still be registered in flight (GC has not claimed
/// it); the registrations end here.
pub(crate) fn put_locs(tx: &mut dyn MetaTxn, new: &[(ChunkId, SharedLoc)]) -> Result<()> {
    let mut segments: Vec<u128> = new.iter().map(|(_, l)| l.segment).collect();
    segments.sort_unstable();
    segments.dedup();
    for seg in segments {
        let key = seg.to_be_bytes();
        if tx.get(Table::Inflight, &key)?.is_none() {
            return Err(StoreError::Aborted(format!(
                "segment {seg:032x} was reclaimed by GC before this write committed \
                 (the write stalled for longer than the GC grace period); nothing was stored"
            )));
        }
        tx.delete(Table::Inflight, &key)?;
    }
    for (id, loc) in new {
        if tx.get(Table::ChunkLocs, &id.0)?.is_none() {
            tx.put(Table::ChunkLocs, &id.0, &loc.encode())?;
        }
    }
    Ok(())
}

/// Look `ids` up in the metadata store, one batch (`get_many`).
fn meta_lookup(meta: &dyn MetaStore, ids: &[ChunkId]) -> Result<Vec<Option<SharedLoc>>> {
    let keys: Vec<&[u8]> = ids.iter().map(|id| &id.0[..]).collect();
    meta.get_many(Table::ChunkLocs, &keys)?
        .into_iter()
        .map(|v| v.map(|v| SharedLoc::decode(&v)).transpose())
        .collect()
}

impl Store {
    pub(crate) fn shared(&self) -> Option<&Shared> {
        self.inner().shared.as_ref()
    }

    /// Where `ids` are stored: this frontend's cache first, then one batch
    /// query for the rest. Found locations are cached.
    pub(crate) fn shared_lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<SharedLoc>>> {
        let Some(sh) = self.shared() else {
            return Ok(vec![None; ids.len()]);
        };
        let mut out: Vec<Option<SharedLoc>> = {
            let g = sh.locs.lock();
            ids.iter().map(|id| g.map.get(id).copied()).collect()
        };
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out);
        }
        // Batches bound one query's size (and a PostgreSQL statement's).
        for part in missing.chunks(1024) {
            let want: Vec<ChunkId> = part.iter().map(|&i| ids[i]).collect();
            let found = meta_lookup(&*self.inner().meta, &want)?;
            sh.remember(
                want.iter()
                    .zip(&found)
                    .filter_map(|(id, l)| l.map(|l| (*id, l))),
            );
            for (&i, l) in part.iter().zip(found) {
                out[i] = l;
            }
        }
        Ok(out)
    }

    /// Read (and always verify: the bytes crossed a network and may fill
    /// the cache) chunks of `object`: cache hits from local disk, the rest
    /// with one ranged GET per run of adjacent records of one segment
    /// object, the GETs of one batch in parallel.
    pub(crate) fn shared_read_chunks(&self, ids: &[ChunkId], object: &str) -> Result<Vec<Bytes>> {
        use rayon::prelude::*;
        let Some(sh) = self.shared() else {
            return Err(StoreError::Aborted("not a shared store".into()));
        };
        let mut out: Vec<Option<Bytes>> = vec![None; ids.len()];
        if let Some(c) = &sh.cache {
            for (i, id) in ids.iter().enumerate() {
                out[i] = c.get(id);
            }
        }
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| out[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(out.into_iter().flatten().collect());
        }
        let want: Vec<ChunkId> = missing.iter().map(|&i| ids[i]).collect();
        let locs = self.shared_lookup(&want)?;
        let mut placed: Vec<(usize, SharedLoc)> = Vec::with_capacity(missing.len());
        for (&i, l) in missing.iter().zip(&locs) {
            match l {
                Some(l) => placed.push((i, *l)),
                None => return Err(StoreError::MissingChunk(ids[i])),
            }
        }
        // Runs of adjacent records in one object (an object written in one
        // go lies in order): one GET each, at most 16 MiB.
        placed.sort_by_key(|(_, l)| (l.segment, l.offset));
        placed.dedup_by_key(|(i, _)| ids[*i]);
        let mut runs: Vec<Vec<(usize, SharedLoc)>> = Vec::new();
        for p in placed {
            match runs.last_mut() {
                Some(run)
                    if run.last().is_some_and(|(_, l)| {
                        l.segment == p.1.segment
                            && l.record_end() == p.1.offset
                            && p.1.record_end() - run[0].1.offset <= 16 << 20
                    }) =>
                {
                    run.push(p)
                }
                _ => runs.push(vec![p]),
            }
        }
        let gets: Vec<(String, u64, u64)> = runs
            .iter()
            .map(|run| {
                let first = run[0].1;
                let end = run
                    .last()
                    .map_or(first.record_end(), |(_, l)| l.record_end());
                (
                    sh.objects.segment_key(first.segment),
                    first.offset,
                    end - first.offset,
                )
            })
            .collect();
        let got = sh.objects.get_ranges(gets.clone());
        let mut fetched: Vec<(usize, Bytes)> = Vec::new();
        for ((run, got), (key, start, _)) in runs.iter().zip(got).zip(&gets) {
            let buf = match got? {
                Got::Data(b) => b,
                Got::Missing => {
                    return Err(StoreError::Integrity {
                        object: object.into(),
                        chunk: ids[run[0].0],
                        what: format!(
                            "is in segment object {key}, which is missing from {}",
                            sh.objects.name()
                        ),
                    })
                }
            };
            for (i, l) in run {
                let at = (l.offset - start) as usize;
                let end = (l.record_end() - start) as usize;
                let ok = segment::decode_record_header(&buf[at..end])
                    .is_some_and(|(hid, hlen, _)| hid == ids[*i] && hlen == l.len);
                if !ok {
                    return Err(StoreError::Integrity {
                        object: object.into(),
                        chunk: ids[*i],
                        what: format!(
                            "has no intact record header at offset {} of segment object {key}",
                            l.offset
                        ),
                    });
                }
                fetched.push((*i, buf.slice(at + RECORD_HEADER_LEN as usize..end)));
            }
        }
        let bad = fetched
            .par_iter()
            .find_any(|(i, d)| ChunkId::of(d) != ids[*i])
            .map(|(i, _)| *i);
        if let Some(i) = bad {
            let l = locs[missing.iter().position(|&m| m == i).unwrap_or(0)];
            let seg = l.map_or_else(String::new, |l| sh.objects.segment_key(l.segment));
            return Err(StoreError::Integrity {
                object: object.into(),
                chunk: ids[i],
                what: format!("has bytes that do not match its id in segment object {seg}"),
            });
        }
        for (i, d) in fetched {
            if let Some(c) = &sh.cache {
                c.put(&ids[i], &d);
            }
            out[i] = Some(d);
        }
        // Ids asked for twice were fetched once: fill the repeats.
        for i in 0..ids.len() {
            if out[i].is_none() {
                out[i] = ids[..i]
                    .iter()
                    .position(|x| *x == ids[i])
                    .and_then(|j| out[j].clone());
            }
        }
        out.into_iter()
            .zip(ids)
            .map(|(d, id)| d.ok_or(StoreError::MissingChunk(*id)))
            .collect()
    }

    /// Store chunks received by id (chunk API, pulls, migrations) in shared
    /// mode: the new ones go into one segment object, uploaded, then their
    /// locations are committed. Unreferenced until a manifest names them.
    pub(crate) fn shared_put_chunks(&self, chunks: &[(ChunkId, Bytes)]) -> Result<usize> {
        let ids: Vec<ChunkId> = chunks.iter().map(|(id, _)| *id).collect();
        let found = self.shared_lookup(&ids)?;
        let mut seen = std::collections::HashSet::new();
        let new: Vec<(ChunkId, Bytes)> = chunks
            .iter()
            .zip(&found)
            .filter(|((id, _), f)| f.is_none() && seen.insert(*id))
            .map(|((id, d), _)| (*id, d.clone()))
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        let mut pipe = StagingPipe::start(self.clone())?;
        if !pipe.send(new) {
            pipe.finish()?;
            return Err(StoreError::Aborted("the staging thread stopped".into()));
        }
        let locs = pipe.finish()?;
        self.inner().meta.write(&mut |tx| put_locs(tx, &locs))?;
        if let Some(sh) = self.shared() {
            sh.remember(locs.iter().copied());
        }
        Ok(locs.len())
    }

    /// After a commit: this frontend may dedup against what it just wrote
    /// without asking the metadata store.
    pub(crate) fn shared_committed(&self, locs: &[(ChunkId, SharedLoc)]) {
        if let Some(sh) = self.shared() {
            sh.remember(locs.iter().copied());
        }
    }

    /// The segment objects in the bucket, with their sizes (tests, fsck).
    pub fn segment_objects(&self) -> Result<Vec<(String, u64)>> {
        match self.shared() {
            Some(sh) => sh.objects.list("segments/"),
            None => Err(StoreError::Unsupported(
                "segment objects exist only with the s3 backend".into(),
            )),
        }
    }

    /// True with the s3 segment backend (a shared repository).
    pub fn is_shared(&self) -> bool {
        self.shared().is_some()
    }

    /// Hits and misses of the shared mode's chunk read cache.
    pub fn read_cache_stats(&self) -> CacheStats {
        self.shared().map(Shared::cache_stats).unwrap_or_default()
    }

    /// Which segment backend this store uses, for banners (no secrets).
    pub fn storage_description(&self) -> String {
        match self.shared() {
            Some(sh) => sh.describe(),
            None => format!("local ({})", self.inner().seg_dir.display()),
        }
    }

    pub(crate) fn refuse_in_shared_mode(&self, what: &str) -> Result<()> {
        if self.shared().is_some() {
            return Err(StoreError::Unsupported(format!(
                "{what} is not supported with the s3 segment backend yet"
            )));
        }
        Ok(())
    }
}

type Uploaded = Vec<(ChunkId, SharedLoc)>;

/// How often a running stream refreshes the registrations of the segments
/// it uploaded; GC's grace period must be much longer (minutes).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(30);

/// Register `seg` in flight, before its upload starts.
fn register_segment(store: &Store, seg: u128) -> Result<()> {
    let now = super::now_ms().to_le_bytes();
    store
        .inner()
        .meta
        .write(&mut |tx| tx.put(Table::Inflight, &seg.to_be_bytes(), &now))
}

/// Refresh the heartbeat of registrations that still exist: one GC removed
/// stays removed (its segment object may be gone already).
fn refresh_registrations(store: &Store, segs: &[u128]) -> Result<()> {
    if segs.is_empty() {
        return Ok(());
    }
    let now = super::now_ms().to_le_bytes();
    store.inner().meta.write(&mut |tx| {
        for seg in segs {
            let key = seg.to_be_bytes();
            if tx.get(Table::Inflight, &key)?.is_some() {
                tx.put(Table::Inflight, &key, &now)?;
            }
        }
        Ok(())
    })
}

/// Drop the registrations of segments a failed stream uploaded (they will
/// never be committed): GC may then reclaim them without waiting.
fn unregister_segments(store: &Store, segs: &[u128]) {
    if segs.is_empty() {
        return;
    }
    let r = store.inner().meta.write(&mut |tx| {
        for seg in segs {
            tx.delete(Table::Inflight, &seg.to_be_bytes())?;
        }
        Ok(())
    });
    if let Err(e) = r {
        tracing::debug!("cannot drop in-flight registrations (GC will expire them): {e}");
    }
}

/// One ingest stream's staging thread: appends new chunks to a private
/// staging segment, and when it passes the segment size seals it and starts
/// its upload while the next one fills. At most two segments of a stream
/// are in flight, so a stream's memory is bounded by its batches, one append
/// buffer and the upload parts in flight.
pub(crate) struct StagingPipe {
    tx: Option<SyncSender<Vec<(ChunkId, Bytes)>>>,
    handle: Option<JoinHandle<Result<Uploaded>>>,
    /// Set when the stream is abandoned: upload nothing more.
    cancel: Arc<AtomicBool>,
}

impl StagingPipe {
    pub fn start(store: Store) -> Result<StagingPipe> {
        let (tx, rx) = sync_channel::<Vec<(ChunkId, Bytes)>>(4);
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("strato-staging".into())
            .spawn(move || staging_thread(store, rx, c))
            .map_err(|e| StoreError::Aborted(format!("cannot start a staging thread: {e}")))?;
        Ok(StagingPipe {
            tx: Some(tx),
            handle: Some(handle),
            cancel,
        })
    }

    /// False if the thread has stopped (its error comes from `finish`).
    pub fn send(&mut self, batch: Vec<(ChunkId, Bytes)>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok())
    }

    /// Wait until every chunk sent is in an acknowledged segment object;
    /// returns where each one is.
    pub fn finish(&mut self) -> Result<Uploaded> {
        drop(self.tx.take());
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(StoreError::Aborted("the staging thread panicked".into())),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for StagingPipe {
    fn drop(&mut self) {
        // Not finished: the writer was abandoned (client gone, error).
        self.cancel.store(true, Ordering::Release);
        let _ = self.finish();
    }
}

/// A sealed staging segment being uploaded by a helper thread.
type Upload = JoinHandle<Result<()>>;

fn staging_thread(
    store: Store,
    rx: Receiver<Vec<(ChunkId, Bytes)>>,
    cancel: Arc<AtomicBool>,
) -> Result<Uploaded> {
    let _span = tracing::debug_span!("staging").entered();
    let mut current: Option<(u128, SegmentAppender)> = None;
    let mut uploads: VecDeque<Upload> = VecDeque::new();
    let mut out = Uploaded::new();
    // Segments handed to an upload (registered), for heartbeats.
    let mut started: Vec<u128> = Vec::new();
    let mut beat = std::time::Instant::now();
    let result = (|| -> Result<()> {
        loop {
            let batch = match rx.recv_timeout(HEARTBEAT) {
                Ok(b) => b,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Vec::new(),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if beat.elapsed() >= HEARTBEAT {
                refresh_registrations(&store, &started)?;
                beat = std::time::Instant::now();
            }
            for (id, data) in batch {
                if current.is_none() {
                    current = Some(new_staging(&store)?);
                }
                let Some((seg_id, app)) = current.as_mut() else {
                    return Err(StoreError::Aborted("no staging segment".into()));
                };
                let rec = app.append(&id, &data);
                out.push((
                    id,
                    SharedLoc {
                        segment: *seg_id,
                        offset: rec.offset,
                        len: rec.len,
                    },
                ));
                if app.buffered() >= segment::APPEND_BUFFER {
                    app.flush()?;
                }
            }
            let full = current
                .as_ref()
                .is_some_and(|(_, a)| a.end_offset() >= store.config().segment_size);
            if full {
                if let Some((seg_id, app)) = current.take() {
                    while !uploads.is_empty() {
                        join_upload(uploads.pop_front())?;
                    }
                    started.push(seg_id);
                    uploads.push_back(spawn_upload(store.clone(), seg_id, app)?);
                }
            }
        }
        if cancel.load(Ordering::Acquire) {
            return Err(StoreError::Aborted("the write was abandoned".into()));
        }
        if let Some((seg_id, app)) = current.take() {
            started.push(seg_id);
            upload_sealed(&store, seg_id, app)?;
        }
        Ok(())
    })();
    // Every upload started must end before we answer, success or not:
    // the caller commits only what is acknowledged.
    let mut joined = Ok(());
    for u in uploads {
        let r = join_upload(Some(u));
        if joined.is_ok() {
            joined = r;
        }
    }
    // A segment still open here means the stream failed: nothing of it
    // was uploaded or will be referenced.
    if let Some((_, app)) = current.take() {
        remove_staging(&app.segment().path);
    }
    if result.is_err() || joined.is_err() {
        unregister_segments(&store, &started);
    }
    result?;
    joined?;
    Ok(out)
}

fn new_staging(store: &Store) -> Result<(u128, SegmentAppender)> {
    let Some(sh) = store.shared() else {
        return Err(StoreError::Aborted("not a shared store".into()));
    };
    let id: u128 = rand::random();
    let path = sh.staging.join(format!("{id:032x}.seg"));
    // The header has room for 64 bits: the low half, for people reading
    // a segment file; the object name carries the whole id.
    Ok((id, SegmentAppender::create_at(path, id as u64, false)?))
}

fn spawn_upload(store: Store, seg_id: u128, app: SegmentAppender) -> Result<Upload> {
    std::thread::Builder::new()
        .name("strato-upload".into())
        .spawn(move || upload_sealed(&store, seg_id, app))
        .map_err(|e| StoreError::Aborted(format!("cannot start an upload thread: {e}")))
}

fn join_upload(u: Option<Upload>) -> Result<()> {
    match u.map(JoinHandle::join) {
        None => Ok(()),
        Some(Ok(r)) => r,
        Some(Err(_)) => Err(StoreError::Aborted("an upload thread panicked".into())),
    }
}

/// Seal, upload as one object, delete the staging file (whatever happened).
fn upload_sealed(store: &Store, seg_id: u128, app: SegmentAppender) -> Result<()> {
    let Some(sh) = store.shared() else {
        return Err(StoreError::Aborted("not a shared store".into()));
    };
    let path = app.segment().path.clone();
    let r = (|| {
        register_segment(store, seg_id)?;
        let seg = app.seal()?;
        let len = std::fs::metadata(&path).at(&path)?.len();
        drop(seg);
        sh.objects
            .put_file(&sh.objects.segment_key(seg_id), &path, len)
    })();
    remove_staging(&path);
    r
}

fn remove_staging(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove a staging segment: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_round_trip_and_reject_garbage() {
        let l = SharedLoc {
            segment: u128::MAX - 3,
            offset: 1 << 40,
            len: 65536,
        };
        assert_eq!(SharedLoc::decode(&l.encode()).unwrap(), l);
        assert!(SharedLoc::decode(&[0u8; 20]).is_err());
        assert_eq!(l.record_end(), (1 << 40) + 48 + 65536);
    }

    #[test]
    fn loc_cache_is_bounded() {
        let mut c = LocCache::default();
        let l = SharedLoc {
            segment: 1,
            offset: 32,
            len: 1,
        };
        // Real (uniformly random) ids: the index hasher relies on that.
        for i in 0..(LocCache::MAX + 10) as u64 {
            c.insert(ChunkId::of(&i.to_le_bytes()), l);
        }
        assert!(c.map.len() <= LocCache::MAX);
    }
}
