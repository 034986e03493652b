//! Secondary index of 4 KiB blocks inside stored objects.
//!
//! A guest's page cache holds 4 KiB blocks of its disk image, and a disk
//! migration moves 4 KiB-aligned blocks; neither is a chunk of the store
//! (chunks are 16 KiB on average). For buckets that ask for it, every
//! 4 KiB-aligned block of every object is hashed and recorded as
//! `block id -> (chunk id, offset in chunk)`, so such pages and blocks
//! resolve against the repository by their own BLAKE3 id (`has_content`,
//! `read_content`, used by the chunk API).
//!
//! The index is a cache, never a source of truth: an entry is checked
//! against the bytes it leads to on every read, a missing entry only costs a
//! transfer, and GC drops entries whose chunk is gone. It is built after the
//! object's commit (not inside it), so a crash in between leaves an object
//! without entries; `strato block-index enable` on the bucket re-indexes.
//!
//! Only blocks that lie wholly inside one chunk are indexed. With
//! block-aligned chunking (the default for images) that is every block;
//! with FastCDC, blocks that straddle a chunk boundary are skipped. All-zero
//! blocks are never indexed (zero pages travel as zero already).

use bytes::Bytes;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::meta::{self, Table};
use super::model;
use super::{ChunkId, Result, Store, StoreError};

/// Size of an indexed block: x86's page and the usual filesystem block.
pub const BLOCK_SIZE: usize = 4096;

/// Chunk bytes read per batch while indexing an object.
const INDEX_BATCH_BYTES: usize = 32 << 20;

/// Per-bucket settings, kept apart from [`model::BucketRecord`] so buckets
/// written before this existed still decode.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketOptions {
    /// Index the 4 KiB blocks of every object written into the bucket.
    pub block_index: bool,
}

/// Where a block lives: inside `chunk` at byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    pub chunk: ChunkId,
    pub offset: u32,
}

impl BlockRef {
    /// Fixed 36-byte value: chunk id then big-endian offset. A block index
    /// holds millions of these, so no version byte and no varints.
    fn encode(&self) -> [u8; 36] {
        let mut v = [0u8; 36];
        v[..32].copy_from_slice(&self.chunk.0);
        v[32..].copy_from_slice(&self.offset.to_be_bytes());
        v
    }

    fn decode(v: &[u8]) -> Result<BlockRef> {
        if v.len() != 36 {
            return Err(StoreError::Meta(format!(
                "block index entry of {} bytes",
                v.len()
            )));
        }
        let mut chunk = [0u8; 32];
        chunk.copy_from_slice(&v[..32]);
        let mut off = [0u8; 4];
        off.copy_from_slice(&v[32..]);
        Ok(BlockRef {
            chunk: ChunkId(chunk),
            offset: u32::from_be_bytes(off),
        })
    }
}

/// What indexing one object did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlockIndexReport {
    /// Blocks recorded (including ones already recorded by another object).
    pub indexed: u64,
    /// All-zero blocks, not recorded.
    pub zero: u64,
    /// Blocks that straddle a chunk boundary (or a zero run), not recorded.
    pub straddling: u64,
}

impl BlockIndexReport {
    fn add(&mut self, o: &BlockIndexReport) {
        self.indexed += o.indexed;
        self.zero += o.zero;
        self.straddling += o.straddling;
    }
}

impl Store {
    pub fn bucket_options(&self, bucket: &str) -> Result<BucketOptions> {
        self.bucket(bucket)?;
        match self
            .inner
            .meta
            .get(Table::BucketOptions, bucket.as_bytes())?
        {
            Some(v) => model::decode(&v),
            None => Ok(BucketOptions::default()),
        }
    }

    pub fn set_bucket_options(&self, bucket: &str, opts: &BucketOptions) -> Result<()> {
        let encoded = model::encode(opts)?;
        self.inner.meta.write(&mut |tx| {
            if tx.get(Table::Buckets, bucket.as_bytes())?.is_none() {
                return Err(StoreError::NoSuchBucket(bucket.into()));
            }
            tx.put(Table::BucketOptions, bucket.as_bytes(), &encoded)
        })
    }

    /// Turn block indexing on or off for a bucket. Turning it on indexes
    /// the objects already there (returned summed); turning it off stops
    /// indexing new objects (existing entries stay until GC finds their
    /// chunks gone: they are still correct).
    pub fn set_block_index(&self, bucket: &str, on: bool) -> Result<BlockIndexReport> {
        let mut opts = self.bucket_options(bucket)?;
        opts.block_index = on;
        self.set_bucket_options(bucket, &opts)?;
        let mut total = BlockIndexReport::default();
        if on {
            let mut marker: Option<String> = None;
            loop {
                let (page, more) = self.list_objects(bucket, "", marker.as_deref(), 1000)?;
                for (key, _) in &page {
                    match self.index_object_blocks(bucket, key) {
                        Ok(r) => total.add(&r),
                        // Deleted meanwhile: nothing to index.
                        Err(StoreError::NoSuchKey { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                match page.last() {
                    Some((last, _)) if more => marker = Some(last.clone()),
                    _ => break,
                }
            }
        }
        Ok(total)
    }

    /// Index the object after a commit if its bucket asks for it. Indexing
    /// is an optimisation: a failure is logged, never reported to the
    /// writer whose object is already durable.
    pub(crate) fn index_if_enabled(&self, bucket: &str, key: &str) {
        let on = matches!(self.bucket_options(bucket), Ok(o) if o.block_index);
        if !on {
            return;
        }
        if let Err(e) = self.index_object_blocks(bucket, key) {
            tracing::warn!(bucket, key, error = %e, "block index not updated");
        }
    }

    /// Record every 4 KiB-aligned block of the object that lies inside one
    /// chunk. Idempotent.
    pub fn index_object_blocks(&self, bucket: &str, key: &str) -> Result<BlockIndexReport> {
        let (_, chunks) = self.manifest(bucket, key)?;
        let object = format!("{bucket}/{key}");
        let mut report = BlockIndexReport::default();
        // (chunk, object offset of the chunk), batched by bytes.
        let mut batch: Vec<(ChunkId, u64)> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut offset = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            if c.id.is_zero_run() {
                report.zero += blocks_within(offset, c.len as u64);
            } else {
                batch.push((c.id, offset));
                batch_bytes += c.len as usize;
            }
            offset += c.len as u64;
            // An unaligned boundary between two pieces cuts one block.
            if i + 1 < chunks.len() && !offset.is_multiple_of(BLOCK_SIZE as u64) {
                report.straddling += 1;
            }
            if batch_bytes >= INDEX_BATCH_BYTES {
                report.add(&self.index_batch(&batch, &object)?);
                batch.clear();
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            report.add(&self.index_batch(&batch, &object)?);
        }
        Ok(report)
    }

    fn index_batch(&self, batch: &[(ChunkId, u64)], object: &str) -> Result<BlockIndexReport> {
        let ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
        // Unverified: a damaged chunk only yields block ids that nothing
        // asks for, and `read_content` checks block bytes on every read.
        let datas = self.read_chunks(&ids, object, false)?;
        // Hashing dominates: spread it over all cores.
        let found: Vec<(Vec<(ChunkId, BlockRef)>, u64)> = batch
            .par_iter()
            .zip(datas.par_iter())
            .map(|((chunk, at), data)| chunk_blocks(*chunk, *at, data))
            .collect();
        let mut report = BlockIndexReport::default();
        let mut entries = Vec::new();
        for (blocks, zero) in found {
            report.zero += zero;
            report.indexed += blocks.len() as u64;
            entries.extend(blocks);
        }
        self.inner.meta.write(&mut |tx| {
            for (id, r) in &entries {
                // A block that is itself a stored chunk needs no entry.
                if *id != r.chunk {
                    tx.put(Table::Blocks, &id.0, &r.encode())?;
                }
            }
            Ok(())
        })?;
        Ok(report)
    }

    /// The index entry for a block id, if any (not checked against data).
    pub fn locate_block(&self, id: &ChunkId) -> Result<Option<BlockRef>> {
        match self.inner.meta.get(Table::Blocks, &id.0)? {
            Some(v) => Ok(Some(BlockRef::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Whether content with this id can be served: a stored chunk, or an
    /// indexed block whose chunk is still stored.
    pub fn has_content(&self, id: &ChunkId) -> bool {
        if self.has_chunk(id) {
            return true;
        }
        matches!(self.locate_block(id), Ok(Some(r)) if self.has_chunk(&r.chunk))
    }

    /// Read content by id: a chunk, or an indexed block cut out of its
    /// chunk. Block bytes are always checked against the id: the index may
    /// be stale, the answer never is.
    pub fn read_content(&self, id: &ChunkId) -> Result<Bytes> {
        match self.read_chunk(id) {
            Err(StoreError::MissingChunk(_)) => {}
            other => return other,
        }
        let Some(r) = self.locate_block(id)? else {
            return Err(StoreError::MissingChunk(*id));
        };
        let data = match self.read_chunk(&r.chunk) {
            Ok(d) => d,
            Err(StoreError::MissingChunk(_)) => return Err(StoreError::MissingChunk(*id)),
            Err(e) => return Err(e),
        };
        let start = r.offset as usize;
        match data.get(start..start + BLOCK_SIZE) {
            Some(b) if ChunkId::of(b) == *id => Ok(data.slice(start..start + BLOCK_SIZE)),
            _ => Err(StoreError::MissingChunk(*id)),
        }
    }

    /// Number of block index entries (a full scan: for stats and tests).
    pub fn block_index_len(&self) -> Result<u64> {
        let mut n = 0u64;
        meta::for_each(&*self.inner.meta, Table::Blocks, b"", |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Drop entries whose chunk is no longer stored. Called by GC after it
    /// reclaimed chunks; returns how many entries went.
    pub(crate) fn sweep_block_index(&self) -> Result<u64> {
        let mut stale: Vec<Vec<u8>> = Vec::new();
        meta::for_each(&*self.inner.meta, Table::Blocks, b"", |k, v| {
            let r = BlockRef::decode(v)?;
            if !self.has_chunk(&r.chunk) {
                stale.push(k.to_vec());
            }
            Ok(())
        })?;
        for keys in stale.chunks(4096) {
            self.inner.meta.write(&mut |tx| {
                for k in keys {
                    tx.delete(Table::Blocks, k)?;
                }
                Ok(())
            })?;
        }
        Ok(stale.len() as u64)
    }
}

/// Blocks of one chunk at object offset `at`: (block id, where) for each
/// non-zero block wholly inside it, and the number of zero blocks.
fn chunk_blocks(chunk: ChunkId, at: u64, data: &Bytes) -> (Vec<(ChunkId, BlockRef)>, u64) {
    let bs = BLOCK_SIZE as u64;
    let first = at.div_ceil(bs) * bs; // first aligned object offset inside
    let mut out = Vec::with_capacity(data.len() / BLOCK_SIZE);
    let mut zero = 0u64;
    let mut o = first;
    while o + bs <= at + data.len() as u64 {
        let start = (o - at) as usize;
        let block = &data[start..start + BLOCK_SIZE];
        if block.iter().all(|&b| b == 0) {
            zero += 1;
        } else {
            out.push((
                ChunkId::of(block),
                BlockRef {
                    chunk,
                    offset: start as u32,
                },
            ));
        }
        o += bs;
    }
    (out, zero)
}

/// Aligned blocks lying wholly inside `[at, at + len)`.
fn blocks_within(at: u64, len: u64) -> u64 {
    let bs = BLOCK_SIZE as u64;
    let first = at.div_ceil(bs) * bs;
    let end = (at + len) / bs * bs;
    end.saturating_sub(first) / bs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_refs_round_trip() {
        let r = BlockRef {
            chunk: ChunkId::of(b"x"),
            offset: 12288,
        };
        assert_eq!(BlockRef::decode(&r.encode()).unwrap(), r);
        assert!(BlockRef::decode(&[0u8; 35]).is_err());
    }

    #[test]
    fn counts_of_aligned_blocks() {
        assert_eq!(blocks_within(0, 8192), 2);
        assert_eq!(blocks_within(100, 8192), 1);
        assert_eq!(blocks_within(4096, 4095), 0);
        let data = Bytes::from(vec![7u8; 10000]);
        let (blocks, zero) = chunk_blocks(ChunkId::of(&data), 100, &data);
        // Only the block at object offset 4096 lies wholly inside [100, 10100).
        assert_eq!(blocks.len(), 1);
        assert_eq!(zero, 0);
        assert_eq!(blocks[0].1.offset, 3996);
    }
}
