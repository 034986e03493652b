//! The hot chunk-id -> location map, held in memory and rebuilt from segment
//! trailers at open: no B-tree keeps up with one insert per 4 KiB page.
//!
//! Pins make garbage collection race-free. A writer pins every chunk it relies
//! on (a dedup hit or a chunk it is writing) before its manifest commits, and
//! unpins after; GC only removes unpinned entries, under the same lock, so a
//! chunk can never vanish between a writer finding it and committing a
//! reference to it.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::id::{BuildIdHasher, ChunkId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub segment: u32,
    pub len: u32,
    /// Offset of the record header within the segment.
    pub offset: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<ChunkId, Loc, BuildIdHasher>,
    pins: HashMap<ChunkId, u32, BuildIdHasher>,
}

#[derive(Default)]
pub struct ChunkIndex {
    inner: Mutex<Inner>,
}

impl ChunkIndex {
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: &ChunkId) -> Option<Loc> {
        self.inner.lock().map.get(id).copied()
    }

    /// Pin `id` and return where it is stored, if it is.
    pub fn pin_lookup(&self, id: &ChunkId) -> Option<Loc> {
        let mut g = self.inner.lock();
        *g.pins.entry(*id).or_insert(0) += 1;
        g.map.get(id).copied()
    }

    pub fn unpin_all<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut g = self.inner.lock();
        for id in ids {
            if let Some(n) = g.pins.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    g.pins.remove(id);
                }
            }
        }
    }

    /// Record where chunks live; an existing entry wins (the newer copy is
    /// then a duplicate that compaction drops).
    pub fn insert_many(&self, entries: impl IntoIterator<Item = (ChunkId, Loc)>) {
        let mut g = self.inner.lock();
        for (id, loc) in entries {
            g.map.entry(id).or_insert(loc);
        }
    }

    /// Remove `id` if it is still at `loc` and nobody has it pinned.
    pub fn remove_unpinned(&self, id: &ChunkId, loc: Loc) -> bool {
        let mut g = self.inner.lock();
        if g.pins.contains_key(id) || g.map.get(id) != Some(&loc) {
            return false;
        }
        g.map.remove(id);
        true
    }

    pub fn is_pinned(&self, id: &ChunkId) -> bool {
        self.inner.lock().pins.contains_key(id)
    }

    /// Move an entry after compaction copied its record; no-op if it moved
    /// or vanished meanwhile.
    pub fn relocate(&self, id: &ChunkId, from: Loc, to: Loc) -> bool {
        let mut g = self.inner.lock();
        match g.map.get_mut(id) {
            Some(l) if *l == from => {
                *l = to;
                true
            }
            _ => false,
        }
    }

    pub fn snapshot(&self) -> Vec<(ChunkId, Loc)> {
        self.inner
            .lock()
            .map
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_entries_survive_removal() {
        let idx = ChunkIndex::default();
        let id = ChunkId::of(b"x");
        let loc = Loc {
            segment: 1,
            len: 1,
            offset: 32,
        };
        idx.insert_many([(id, loc)]);
        assert_eq!(idx.pin_lookup(&id), Some(loc));
        assert!(!idx.remove_unpinned(&id, loc));
        idx.unpin_all([&id]);
        assert!(idx.remove_unpinned(&id, loc));
        assert_eq!(idx.get(&id), None);
    }
}
