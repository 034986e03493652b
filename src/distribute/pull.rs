//! Delta pull: bring an object from a repository into a node-local cache
//! (a strato store) by moving only the chunks the cache lacks, then write
//! it out as a sparse file.
//!
//! Resuming is free: every fetched chunk is in the cache's segments as soon
//! as `put_chunk_unsynced` returns (a killed pull's chunks survive; only a
//! power loss could drop the unsynced tail, which the segment scan cuts off
//! cleanly), and a restarted pull only asks for what is still missing. The
//! manifest is committed in the cache once every chunk is there — that
//! commit syncs them all, once per segment instead of once per chunk — so
//! the next version of the image deduplicates against this one.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::store::{ChunkId, ObjectMeta, Store, StoreError};
use chunk_api::{ChunkClient, ClientError, ManifestDoc};

/// Guest data lives in 4 KiB blocks: all-zero blocks become holes.
const BLOCK: usize = 4096;
const RETRIES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cache: {0}")]
    Store(#[from] StoreError),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("internal task failed: {0}")]
    Task(String),
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Chunks fetched at once.
    pub parallel: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { parallel: 8 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub chunks: usize,
    pub unique_chunks: usize,
    /// Bytes of zero runs (never stored, never moved).
    pub zero_run_bytes: u64,
    /// Unique chunks already in the cache before this pull.
    pub cached_chunks: usize,
    pub fetched_chunks: u64,
    pub fetched_bytes: u64,
    pub out: Option<PathBuf>,
    pub elapsed_ms: u64,
}

/// The cache's copy of an object must live in a bucket; pulled buckets are
/// owned by the local admin like any bucket made from the command line.
pub fn ensure_bucket(cache: &Store, bucket: &str) -> Result<(), StoreError> {
    match cache.create_bucket(bucket, crate::store::FIRST_USER) {
        Ok(())
        | Err(StoreError::BucketAlreadyOwnedByYou(_) | StoreError::BucketAlreadyExists(_)) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Fetch one chunk with a few retries for transient failures, verify it
/// (the client does) and make it durable in the cache.
pub async fn fetch_into(
    client: &ChunkClient,
    cache: &Store,
    id: ChunkId,
) -> Result<u64, PullError> {
    let mut attempt = 0;
    let data = loop {
        match client.get_chunk(&id).await {
            Ok(d) => break d,
            Err(e) if attempt + 1 < RETRIES && !e.is_not_found() => {
                attempt += 1;
                tracing::debug!("retrying chunk {id}: {e}");
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let len = data.len() as u64;
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || cache.put_chunk_unsynced(&id, &data))
        .await
        .map_err(|e| PullError::Task(e.to_string()))??;
    Ok(len)
}

/// Commit the manifest in the cache (all chunks must be present).
pub fn commit_in_cache(cache: &Store, m: &ManifestDoc) -> Result<(), StoreError> {
    ensure_bucket(cache, &m.bucket)?;
    let meta = ObjectMeta {
        size: m.size,
        etag: m.etag.clone(),
        profile: m.profile.clone(),
        parts: m.parts,
    };
    cache.commit_object(&m.bucket, &m.key, meta, &m.entries())?;
    Ok(())
}

#[tracing::instrument(skip(client, cache, opts), fields(endpoint = client.endpoint()))]
pub async fn pull(
    client: &ChunkClient,
    cache: &Store,
    bucket: &str,
    key: &str,
    out: Option<&Path>,
    opts: &PullOptions,
) -> Result<PullReport, PullError> {
    let started = Instant::now();
    let m = client.manifest(bucket, key).await?;
    let mut seen = HashSet::new();
    let unique: Vec<ChunkId> = m
        .chunks
        .iter()
        .filter(|e| !e.id.is_zero_run() && seen.insert(e.id))
        .map(|e| e.id)
        .collect();
    let zero_run_bytes = m
        .chunks
        .iter()
        .filter(|e| e.id.is_zero_run())
        .map(|e| e.len as u64)
        .sum();
    let missing: Vec<ChunkId> = unique
        .iter()
        .filter(|id| !cache.has_chunk(id))
        .copied()
        .collect();
    let cached_chunks = unique.len() - missing.len();
    tracing::info!(
        size = m.size,
        chunks = unique.len(),
        cached = cached_chunks,
        missing = missing.len(),
        "pulling"
    );

    let fetched_bytes = Arc::new(AtomicU64::new(0));
    let fetched_chunks = Arc::new(AtomicU64::new(0));
    futures::stream::iter(missing.into_iter().map(|id| {
        let (fb, fc) = (fetched_bytes.clone(), fetched_chunks.clone());
        async move {
            let n = fetch_into(client, cache, id).await?;
            fb.fetch_add(n, Ordering::Relaxed);
            fc.fetch_add(1, Ordering::Relaxed);
            Ok::<_, PullError>(())
        }
    }))
    .buffer_unordered(opts.parallel.max(1))
    .try_collect::<()>()
    .await?;

    {
        let (cache, m) = (cache.clone(), m.clone());
        tokio::task::spawn_blocking(move || commit_in_cache(&cache, &m))
            .await
            .map_err(|e| PullError::Task(e.to_string()))??;
    }
    if let Some(out) = out {
        let (cache, m, out) = (cache.clone(), m.clone(), out.to_path_buf());
        tokio::task::spawn_blocking(move || write_sparse(&cache, &m, &out))
            .await
            .map_err(|e| PullError::Task(e.to_string()))??;
    }
    Ok(PullReport {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size: m.size,
        etag: m.etag.clone(),
        chunks: m.chunks.len(),
        unique_chunks: unique.len(),
        zero_run_bytes,
        cached_chunks,
        fetched_chunks: fetched_chunks.load(Ordering::Relaxed),
        fetched_bytes: fetched_bytes.load(Ordering::Relaxed),
        out: out.map(Path::to_path_buf),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Write the object from the cache to `out`: zero runs and all-zero 4 KiB
/// blocks stay holes. Written beside `out` and renamed, so `out` is either
/// the old file or the complete new one.
pub fn write_sparse(cache: &Store, m: &ManifestDoc, out: &Path) -> Result<(), PullError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PullError::Io { path, source }
    };
    let tmp = tmp_path(out);
    let f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let result = (|| {
        f.set_len(m.size).map_err(io(&tmp))?;
        let mut off = 0u64;
        for e in &m.chunks {
            if !e.id.is_zero_run() {
                let data = cache.read_chunk(&e.id)?;
                for (i, block) in data.chunks(BLOCK).enumerate() {
                    if block.iter().any(|&b| b != 0) {
                        f.write_all_at(block, off + (i * BLOCK) as u64)
                            .map_err(io(&tmp))?;
                    }
                }
            }
            off += e.len as u64;
        }
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, out).map_err(io(out))?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is durable only once the directory is.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn tmp_path(out: &Path) -> PathBuf {
    crate::distribute::partial_path(out, "part")
}
