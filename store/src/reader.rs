//! The read path: manifest -> cumulative offsets -> chunks. A range starts
//! with a binary search, so reading the end of a large object touches only
//! the chunks it needs.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::error::Result;
use super::id::ChunkId;
use super::model::{ManifestEntry, ObjectRecord};
use super::Store;

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
/// Chunks read and verified together: hashing them in parallel lets a
/// verified read keep up with the disk on more than one core.
const READ_BATCH_BYTES: u64 = 4 << 20;
const READ_BATCH_CHUNKS: usize = 64;
/// The first batch of a reader is this small and each next one twice the
/// last, up to `READ_BATCH_BYTES`: nothing can be sent before the first
/// batch is read and verified, so a full 4 MiB first batch was a third of
/// an 8 MiB GET's time on loopback. Later batches are read while the
/// caller (a socket, with read-ahead) drains the earlier ones.
const FIRST_BATCH_BYTES: u64 = 256 << 10;

/// An object's chunk list with each chunk's offset: what a ranged read
/// binary-searches. Shared (and cached by the store) between readers.
pub struct Layout {
    pub chunks: Vec<ManifestEntry>,
    /// `starts[i]` is the object offset of `chunks[i]`.
    pub starts: Vec<u64>,
}

impl Layout {
    pub fn new(chunks: Vec<ManifestEntry>) -> Layout {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut off = 0u64;
        for c in &chunks {
            starts.push(off);
            off += c.len as u64;
        }
        Layout { chunks, starts }
    }
}

/// Iterates an object's bytes (or a range of them) as `Bytes` pieces.
pub struct ObjectReader {
    store: Store,
    name: String,
    record: ObjectRecord,
    layout: Arc<Layout>,
    pos: u64,
    end: u64,
    next: usize,
    verify: bool,
    /// Chunks fetched ahead: (index in `chunks`, data).
    ready: VecDeque<(usize, Bytes)>,
    /// Size of the next batch (see `FIRST_BATCH_BYTES`).
    batch_bytes: u64,
}

impl ObjectReader {
    pub(crate) fn new(
        store: Store,
        name: String,
        record: ObjectRecord,
        layout: Arc<Layout>,
        range: Range<u64>,
    ) -> ObjectReader {
        // First chunk whose end is beyond the range start.
        let next = layout
            .starts
            .partition_point(|&s| s <= range.start)
            .saturating_sub(1);
        let verify = store.config().verify_reads;
        ObjectReader {
            store,
            name,
            record,
            layout,
            pos: range.start,
            end: range.end,
            next,
            verify,
            ready: VecDeque::new(),
            batch_bytes: FIRST_BATCH_BYTES,
        }
    }

    pub fn record(&self) -> &ObjectRecord {
        &self.record
    }

    /// Bytes this reader will still produce.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    fn next_piece(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let (i, entry) = match self.layout.chunks.get(self.next) {
            Some(e) => (self.next, *e),
            None => return Ok(None),
        };
        let chunk_start = self.layout.starts[i];
        let chunk_end = chunk_start + entry.len as u64;
        let from = (self.pos - chunk_start) as usize;
        let to = (self.end.min(chunk_end) - chunk_start) as usize;
        let piece = if entry.id.is_zero_run() {
            let n = (to - from).min(ZEROS.len());
            Bytes::from_static(&ZEROS[..n])
        } else {
            if self.ready.front().is_none_or(|(j, _)| *j != i) {
                self.fetch_batch(i)?;
            }
            match self.ready.pop_front() {
                Some((_, data)) => data.slice(from..to),
                None => return Ok(None),
            }
        };
        self.pos += piece.len() as u64;
        if self.pos >= chunk_end {
            self.next += 1;
        }
        Ok(Some(piece))
    }
}

impl ObjectReader {
    /// Read (and verify) the stored chunks from `first` on, up to the end of
    /// the range or a batch's worth, in parallel.
    fn fetch_batch(&mut self, first: usize) -> Result<()> {
        self.ready.clear();
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        for j in first..self.layout.chunks.len() {
            if self.layout.starts[j] >= self.end
                || wanted.len() >= READ_BATCH_CHUNKS
                || bytes >= self.batch_bytes
            {
                break;
            }
            let e = self.layout.chunks[j];
            if !e.id.is_zero_run() {
                wanted.push(j);
                bytes += e.len as u64;
            }
        }
        self.batch_bytes = (self.batch_bytes * 2).min(READ_BATCH_BYTES);
        let ids: Vec<ChunkId> = wanted.iter().map(|&j| self.layout.chunks[j].id).collect();
        let fetched = self.store.read_chunks(&ids, &self.name, self.verify)?;
        self.ready.extend(wanted.into_iter().zip(fetched));
        Ok(())
    }
}

impl Iterator for ObjectReader {
    type Item = Result<Bytes>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_piece() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => {
                self.pos = self.end; // stop after an error
                Some(Err(e))
            }
        }
    }
}
