//! The s3 backend's local read cache: chunks on the frontend's own disk, one
//! file each (`DIR/ab/abcdef….chunk`), bounded in bytes, least recently used
//! evicted first. Chunks are checked against their id when they go in (the
//! caller verified them) and again when they come out, so a torn or damaged
//! cache file is a miss, never wrong data. Nothing in the cache is needed for
//! durability: it may be deleted at any time.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use parking_lot::Mutex;

use super::error::{IoContext, Result};
use super::id::{BuildIdHasher, ChunkId};

pub(crate) struct ChunkCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// id -> (bytes, last use)
    map: HashMap<ChunkId, (u64, u64), BuildIdHasher>,
    /// last use -> id: the eviction order
    lru: BTreeMap<u64, ChunkId>,
    bytes: u64,
    tick: u64,
    hits: u64,
    misses: u64,
}

impl State {
    fn touch(&mut self, id: &ChunkId) -> bool {
        self.tick += 1;
        let tick = self.tick;
        match self.map.get_mut(id) {
            Some(e) => {
                self.lru.remove(&e.1);
                e.1 = tick;
                self.lru.insert(tick, *id);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, id: &ChunkId) {
        if let Some((n, t)) = self.map.remove(id) {
            self.lru.remove(&t);
            self.bytes -= n;
        }
    }

    /// Drop the least recently used entries until `bytes <= max`.
    fn evict(&mut self, max: u64) -> Vec<ChunkId> {
        let mut gone = Vec::new();
        while self.bytes > max {
            let Some((_, id)) = self.lru.pop_first() else {
                break;
            };
            if let Some((n, _)) = self.map.remove(&id) {
                self.bytes -= n;
            }
            gone.push(id);
        }
        gone
    }
}

/// Hit and miss counts and the bytes held, for stats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
    pub chunks: u64,
}

impl ChunkCache {
    /// Open (or make) the cache in `dir`, keeping what an earlier run left
    /// within the bound, oldest files evicted first.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<ChunkCache> {
        std::fs::create_dir_all(dir).at(dir)?;
        let mut found: Vec<(std::time::SystemTime, ChunkId, u64)> = Vec::new();
        for shard in std::fs::read_dir(dir).at(dir)? {
            let shard = shard.at(dir)?.path();
            if !shard.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&shard).at(&shard)? {
                let f = f.at(&shard)?;
                let name = f.file_name();
                let name = name.to_string_lossy();
                let parsed = name
                    .strip_suffix(".chunk")
                    .and_then(|h| h.parse::<ChunkId>().ok());
                match (parsed, f.metadata()) {
                    (Some(id), Ok(m)) => {
                        found.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), id, m.len()))
                    }
                    // Leftover temporary files of a crashed fill.
                    _ => {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let cache = ChunkCache {
            dir: dir.to_owned(),
            max_bytes,
            state: Mutex::new(State::default()),
        };
        let gone = {
            let mut g = cache.state.lock();
            for (_, id, n) in found {
                g.tick += 1;
                let tick = g.tick;
                g.map.insert(id, (n, tick));
                g.lru.insert(tick, id);
                g.bytes += n;
            }
            g.evict(max_bytes)
        };
        cache.remove_files(&gone);
        Ok(cache)
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.chunk"))
    }

    fn remove_files(&self, ids: &[ChunkId]) {
        for id in ids {
            let _ = std::fs::remove_file(self.path(id));
        }
    }

    /// The chunk, if cached and intact.
    pub fn get(&self, id: &ChunkId) -> Option<Bytes> {
        if !self.state.lock().touch(id) {
            self.state.lock().misses += 1;
            return None;
        }
        match std::fs::read(self.path(id)) {
            Ok(data) if ChunkId::of(&data) == *id => {
                self.state.lock().hits += 1;
                Some(Bytes::from(data))
            }
            _ => {
                // Evicted meanwhile, torn by a crash or damaged: a miss.
                let mut g = self.state.lock();
                g.remove(id);
                g.misses += 1;
                drop(g);
                let _ = std::fs::remove_file(self.path(id));
                None
            }
        }
    }

    /// Keep `data`, which the caller has verified against `id`. Failures to
    /// write only cost a later miss, so they are logged, not returned.
    pub fn put(&self, id: &ChunkId, data: &[u8]) {
        let n = data.len() as u64;
        if self.max_bytes == 0 || n > self.max_bytes / 4 {
            return;
        }
        if self.state.lock().touch(id) {
            return;
        }
        let path = self.path(id);
        let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
        let written = (|| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "chunk cache fill failed: {e}");
            let _ = std::fs::remove_file(&tmp);
            return;
        }
        let gone = {
            let mut g = self.state.lock();
            g.tick += 1;
            let tick = g.tick;
            if g.map.insert(*id, (n, tick)).is_none() {
                g.bytes += n;
            } else {
                // Another thread filled it at the same time; keep one entry.
                g.lru.retain(|_, v| v != id);
            }
            g.lru.insert(tick, *id);
            g.evict(self.max_bytes)
        };
        self.remove_files(&gone);
    }

    pub fn stats(&self) -> CacheStats {
        let g = self.state.lock();
        CacheStats {
            hits: g.hits,
            misses: g.misses,
            bytes: g.bytes,
            chunks: g.map.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8, n: usize) -> (ChunkId, Vec<u8>) {
        let d = vec![i; n];
        (ChunkId::of(&d), d)
    }

    #[test]
    fn bounded_lru_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 10_000).unwrap();
        let (a, da) = chunk(1, 2000);
        let (b, db) = chunk(2, 2000);
        c.put(&a, &da);
        c.put(&b, &db);
        assert!(c.get(&a).as_deref() == Some(&da[..]));
        // Fill past the bound: b (least recently used) goes before a.
        for i in 3..7 {
            let (x, dx) = chunk(i, 2000);
            c.put(&x, &dx);
        }
        let s = c.stats();
        assert!(s.bytes <= 10_000, "{s:?}");
        assert!(c.get(&b).is_none());
        assert!(c.get(&a).as_deref() == Some(&da[..]));
        // A damaged file is a miss and is dropped.
        std::fs::write(c.path(&a), b"garbage").unwrap();
        assert!(c.get(&a).is_none());
        assert!(!c.path(&a).exists());
        // Reopen keeps what is there, within the bound.
        let held = c.stats().chunks;
        drop(c);
        let c = ChunkCache::open(dir.path(), 10_000).unwrap();
        assert_eq!(c.stats().chunks, held);
        let c = ChunkCache::open(dir.path(), 4_000).unwrap();
        assert_eq!(c.stats().chunks, 2);
        let on_disk: usize = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|s| std::fs::read_dir(s.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(on_disk, 2);
    }

    #[test]
    fn zero_bound_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = ChunkCache::open(dir.path(), 0).unwrap();
        let (a, da) = chunk(1, 100);
        c.put(&a, &da);
        assert!(c.get(&a).is_none());
    }
}
