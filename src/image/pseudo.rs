//! Pseudo images (Jump-Start §4.3): an image that starts empty on the node,
//! fetches the chunks VMs actually read from upstream (the repository, or
//! another pseudo image's node), keeps them in the node-local cache store,
//! and serves every later read locally.
//!
//! Invariants:
//! - a chunk enters the cache only whole and verified (`put_chunk` checks
//!   the id), so an upstream failure mid-read leaves nothing partial behind;
//! - concurrent readers of one missing chunk cause one fetch: the first
//!   takes the chunk's fetch lock, the others wait on it and then find the
//!   chunk local;
//! - once every chunk is local the manifest is committed in the cache, so a
//!   restarted export (or `strato pull` with the same cache) finds the
//!   image complete.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use serde::Serialize;

use crate::distribute::pull::commit_in_cache;
use crate::store::{ChunkId, Store, StoreError};
use chunk_api::{ChunkClient, ClientError, ManifestDoc};

/// Chunks of one read fetched at once.
const READ_PARALLEL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PseudoError {
    #[error("upstream: {0}")]
    Upstream(#[from] ClientError),
    #[error("cache: {0}")]
    Cache(#[from] StoreError),
    #[error("read of {len} bytes at {offset} is outside the image ({size} bytes)")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Counters of one export (read by logs, `--json` and tests).
#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    read_errors: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    fetched_chunks: AtomicU64,
    fetched_bytes: AtomicU64,
    fetch_us_total: AtomicU64,
    fetch_us_max: AtomicU64,
    refetched_corrupt: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportStats {
    pub name: String,
    pub size: u64,
    pub reads: u64,
    pub read_bytes: u64,
    pub read_errors: u64,
    /// Chunk lookups answered from the cache.
    pub cache_hits: u64,
    /// Chunk lookups that had to go upstream.
    pub cache_misses: u64,
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
    pub fetch_ms_mean: f64,
    pub fetch_ms_max: f64,
    pub refetched_corrupt: u64,
    pub chunks_missing: usize,
    pub complete: bool,
}

pub struct PseudoImage {
    name: String,
    manifest: ManifestDoc,
    /// Start offset of each manifest entry, for binary search.
    offsets: Vec<u64>,
    cache: Store,
    upstream: ChunkClient,
    fetching: Mutex<HashMap<ChunkId, Arc<tokio::sync::Mutex<()>>>>,
    missing: AtomicUsize,
    /// Every chunk id of the image: the only ids it fetches for others.
    ids: HashSet<ChunkId>,
    committed: tokio::sync::Mutex<bool>,
    c: Counters,
}

impl PseudoImage {
    /// Open an export of `bucket/key`. The manifest comes from upstream; if
    /// upstream is down but the cache holds a committed copy, that one
    /// serves (a restarted node keeps working from its cache).
    pub async fn open(
        name: &str,
        upstream: ChunkClient,
        cache: Store,
        bucket: &str,
        key: &str,
    ) -> Result<Arc<PseudoImage>, PseudoError> {
        let manifest = match upstream.manifest(bucket, key).await {
            Ok(m) => m,
            Err(e) if !e.is_not_found() => match local_manifest(&cache, bucket, key) {
                Some(m) => {
                    tracing::warn!(
                        "upstream unavailable ({e}); serving the cached copy of {bucket}/{key}"
                    );
                    m
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        crate::distribute::pull::ensure_bucket(&cache, bucket)?;
        let mut offsets = Vec::with_capacity(manifest.chunks.len());
        let mut off = 0;
        for e in &manifest.chunks {
            offsets.push(off);
            off += e.len as u64;
        }
        let unique: HashSet<ChunkId> = manifest
            .chunks
            .iter()
            .filter(|e| !e.id.is_zero_run())
            .map(|e| e.id)
            .collect();
        let missing = unique.iter().filter(|id| !cache.has_chunk(id)).count();
        let img = Arc::new(PseudoImage {
            name: name.to_string(),
            manifest,
            offsets,
            cache,
            upstream,
            fetching: Mutex::new(HashMap::new()),
            missing: AtomicUsize::new(missing),
            ids: unique,
            committed: tokio::sync::Mutex::new(false),
            c: Counters::default(),
        });
        if missing == 0 {
            img.commit_if_complete().await;
        }
        Ok(img)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.manifest.size
    }

    pub fn stats(&self) -> ExportStats {
        let c = &self.c;
        let fetched = c.fetched_chunks.load(Ordering::Relaxed);
        let missing = self.missing.load(Ordering::Relaxed);
        ExportStats {
            name: self.name.clone(),
            size: self.size(),
            reads: c.reads.load(Ordering::Relaxed),
            read_bytes: c.read_bytes.load(Ordering::Relaxed),
            read_errors: c.read_errors.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            cache_misses: c.misses.load(Ordering::Relaxed),
            fetched_chunks: fetched,
            fetched_bytes: c.fetched_bytes.load(Ordering::Relaxed),
            fetch_ms_mean: if fetched > 0 {
                c.fetch_us_total.load(Ordering::Relaxed) as f64 / fetched as f64 / 1000.0
            } else {
                0.0
            },
            fetch_ms_max: c.fetch_us_max.load(Ordering::Relaxed) as f64 / 1000.0,
            refetched_corrupt: c.refetched_corrupt.load(Ordering::Relaxed),
            chunks_missing: missing,
            complete: missing == 0,
        }
    }

    /// Seal the cache's open segments, so the next open has nothing to
    /// recover. Call at shutdown; reads after it still work.
    pub fn close(&self) -> Result<(), PseudoError> {
        Ok(self.cache.seal_idle_segments()?)
    }

    /// `len` bytes at `offset`; fetches whatever is not local yet.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, PseudoError> {
        self.c.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.read_inner(offset, len as u64).await;
        match &r {
            Ok(b) => {
                self.c
                    .read_bytes
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.c.read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(export = %self.name, offset, len, "read failed: {e}");
            }
        }
        r
    }

    async fn read_inner(&self, offset: u64, len: u64) -> Result<Bytes, PseudoError> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(PseudoError::OutOfRange { offset, len, size });
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset + len;
        let first = self.offsets.partition_point(|&o| o <= offset) - 1;
        let last = self.offsets.partition_point(|&o| o < end) - 1;
        let pieces: Vec<Bytes> = futures::stream::iter(first..=last)
            .map(|i| async move {
                let start = self.offsets[i];
                let e = self.manifest.chunks[i];
                let lo = offset.max(start) - start;
                let hi = end.min(start + e.len as u64) - start;
                if e.id.is_zero_run() {
                    return Ok(Bytes::from(vec![0u8; (hi - lo) as usize]));
                }
                let data = self.chunk(e.id).await?;
                Ok::<_, PseudoError>(data.slice(lo as usize..hi as usize))
            })
            .buffered(READ_PARALLEL)
            .try_collect()
            .await?;
        if pieces.len() == 1 {
            return Ok(pieces.into_iter().next().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for p in pieces {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    async fn local(&self, id: ChunkId) -> Result<Option<Bytes>, PseudoError> {
        if !self.cache.has_chunk(&id) {
            return Ok(None);
        }
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.read_chunk(&id))
            .await
            .map_err(|e| PseudoError::Task(e.to_string()))?
        {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::Integrity { .. }) => {
                // A damaged cached copy: serve a fresh one from upstream.
                tracing::warn!(export = %self.name, "cached chunk {id} is corrupt; refetching");
                self.c.refetched_corrupt.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One chunk's bytes, local or fetched (once, whoever asks).
    async fn chunk(&self, id: ChunkId) -> Result<Bytes, PseudoError> {
        if let Some(b) = self.local(id).await? {
            self.c.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let lock = self
            .fetching
            .lock()
            .entry(id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let guard = lock.lock().await;
        // Whoever held the lock before us may have fetched it already.
        if let Some(b) = self.local(id).await? {
            self.c.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        self.c.misses.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let data = self.upstream.get_chunk(&id).await?;
        let us = t.elapsed().as_micros() as u64;
        self.c.fetch_us_total.fetch_add(us, Ordering::Relaxed);
        self.c.fetch_us_max.fetch_max(us, Ordering::Relaxed);
        self.c.fetched_chunks.fetch_add(1, Ordering::Relaxed);
        self.c
            .fetched_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let (cache, d) = (self.cache.clone(), data.clone());
        let stored = tokio::task::spawn_blocking(move || cache.put_chunk(&id, &d))
            .await
            .map_err(|e| PseudoError::Task(e.to_string()))?;
        match stored {
            Ok(true) => {
                if self.missing.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.commit_if_complete().await;
                }
            }
            Ok(false) => {}
            // The bytes are verified; serving them is right even if the
            // cache could not keep them (the next read fetches again).
            Err(e) => tracing::warn!(export = %self.name, "cannot cache chunk {id}: {e}"),
        }
        drop(guard);
        self.fetching.lock().remove(&id);
        Ok(data)
    }

    async fn commit_if_complete(&self) {
        let mut done = self.committed.lock().await;
        if *done {
            return;
        }
        let (cache, m) = (self.cache.clone(), self.manifest.clone());
        match tokio::task::spawn_blocking(move || commit_in_cache(&cache, &m)).await {
            Ok(Ok(())) => {
                *done = true;
                tracing::info!(export = %self.name, "image complete in the cache; serving locally");
            }
            Ok(Err(e)) => tracing::warn!(export = %self.name, "cannot commit the manifest: {e}"),
            Err(e) => tracing::warn!(export = %self.name, "commit task failed: {e}"),
        }
    }

    /// Fetch every missing chunk in image order, `parallel` at a time, so
    /// the node holds the whole image soon even if VMs read little of it.
    /// Failures are logged and skipped: reads fetch on demand anyway.
    pub async fn prefetch(self: Arc<Self>, parallel: usize) {
        let mut seen = HashSet::new();
        let ids: Vec<ChunkId> = self
            .manifest
            .chunks
            .iter()
            .filter(|e| !e.id.is_zero_run() && seen.insert(e.id))
            .map(|e| e.id)
            .collect();
        futures::stream::iter(ids)
            .for_each_concurrent(parallel.max(1), |id| {
                let me = self.clone();
                async move {
                    if me.cache.has_chunk(&id) {
                        return;
                    }
                    if let Err(e) = me.chunk(id).await {
                        tracing::debug!(export = %me.name, "prefetch of {id} failed: {e}");
                    }
                }
            })
            .await;
        tracing::info!(export = %self.name, stats = ?self.stats(), "prefetch pass finished");
    }
}

/// A pseudo image as the upstream of others (`nbd serve --serve-chunks`):
/// it hands out its manifest and fetches its chunks on their behalf.
#[async_trait::async_trait]
impl crate::chunk_api::ChunkSource for PseudoImage {
    async fn manifest(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<ManifestDoc, crate::chunk_api::SourceError> {
        let d = &self.manifest;
        if d.bucket == bucket && d.key == key {
            Ok(d.clone())
        } else {
            Err(crate::chunk_api::SourceError::NotFound(format!(
                "{bucket}/{key} (this export serves {}/{})",
                d.bucket, d.key
            )))
        }
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<Bytes>, crate::chunk_api::SourceError> {
        if !self.ids.contains(&id) {
            return Ok(None);
        }
        PseudoImage::chunk(self, id)
            .await
            .map(Some)
            .map_err(|e| crate::chunk_api::SourceError::Failed(e.to_string()))
    }
}

fn local_manifest(cache: &Store, bucket: &str, key: &str) -> Option<ManifestDoc> {
    let (rec, entries) = cache.manifest(bucket, key).ok()?;
    Some(ManifestDoc::of_record(bucket, key, &rec, &entries))
}
