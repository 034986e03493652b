//! `stats`: logical bytes, stored bytes, dedup ratio and chunk counts, in all
//! and per chunking profile.

use std::collections::{BTreeMap, HashSet};

use super::audit::Owner;
use super::error::Result;
use super::id::ChunkId;
use super::Store;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProfileStats {
    pub objects: u64,
    pub logical_bytes: u64,
    pub zero_bytes: u64,
    /// distinct chunks referenced by objects of this profile
    pub chunks: u64,
    /// bytes of those distinct chunks
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStats {
    pub engine: String,
    pub buckets: u64,
    pub objects: u64,
    pub logical_bytes: u64,
    pub zero_bytes: u64,
    /// distinct chunks referenced by any object or uploaded part
    pub chunks: u64,
    pub stored_bytes: u64,
    /// logical / stored
    pub dedup_ratio: f64,
    /// chunks in the index, referenced or not
    pub indexed_chunks: u64,
    pub segments: u64,
    pub segment_bytes_on_disk: u64,
    pub profiles: BTreeMap<String, ProfileStats>,
}

impl Store {
    pub fn stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats {
            engine: self.engine().to_string(),
            buckets: self.list_buckets()?.len() as u64,
            ..Default::default()
        };
        let mut all: HashSet<ChunkId> = HashSet::new();
        let mut per_profile: BTreeMap<String, HashSet<ChunkId>> = BTreeMap::new();
        self.for_each_manifest(|owner, size, chunks| {
            let profile = match owner {
                Owner::Object { profile, .. } => {
                    s.objects += 1;
                    s.logical_bytes += size;
                    profile.to_string()
                }
                Owner::Part { .. } => "(multipart parts in flight)".to_string(),
            };
            let ps = s.profiles.entry(profile.clone()).or_default();
            ps.objects += matches!(owner, Owner::Object { .. }) as u64;
            ps.logical_bytes += size;
            let seen = per_profile.entry(profile).or_default();
            for c in chunks {
                if c.id.is_zero_run() {
                    ps.zero_bytes += c.len as u64;
                    continue;
                }
                if seen.insert(c.id) {
                    ps.chunks += 1;
                    ps.stored_bytes += c.len as u64;
                }
                if all.insert(c.id) {
                    s.chunks += 1;
                    s.stored_bytes += c.len as u64;
                }
            }
        })?;
        s.zero_bytes = s.profiles.values().map(|p| p.zero_bytes).sum();
        s.dedup_ratio = if s.stored_bytes == 0 {
            1.0
        } else {
            s.logical_bytes as f64 / s.stored_bytes as f64
        };
        s.indexed_chunks = self.chunk_count() as u64;
        let segs = self.inner().segments.read();
        s.segments = segs.len() as u64;
        s.segment_bytes_on_disk = segs
            .values()
            .map(|seg| std::fs::metadata(&seg.path).map(|m| m.len()).unwrap_or(0))
            .sum();
        Ok(s)
    }
}
