//! What both ends derive from the manifest: the unique non-zero chunks in
//! first-appearance order (the chunk index on the wire), how each is cut
//! into datagram pieces, and a global piece numbering for loss bitmaps.
//! Zero runs are never sent; a chunk used twice is sent once.

use std::collections::HashMap;

use crate::store::{ChunkId, ManifestEntry};

#[derive(Debug, Clone)]
pub struct ChunkSpec {
    pub id: ChunkId,
    pub len: u32,
    /// Offsets of every occurrence in the image (first one first).
    pub image_offsets: Vec<u64>,
    /// Offset among the unique chunks laid end to end.
    pub packed_offset: u64,
    /// Global number of its first piece.
    pub first_piece: u32,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub chunks: Vec<ChunkSpec>,
    pub payload: u32,
    pub total_pieces: u32,
    pub packed_size: u64,
    pub image_size: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("image too large for one session: more than 2^32 datagram pieces")]
pub struct TooLarge;

impl Layout {
    pub fn new(entries: &[ManifestEntry], payload: u32) -> Result<Layout, TooLarge> {
        let payload = payload.max(1);
        let mut chunks: Vec<ChunkSpec> = Vec::new();
        let mut by_id: HashMap<ChunkId, usize> = HashMap::new();
        let (mut off, mut packed, mut pieces) = (0u64, 0u64, 0u64);
        for e in entries {
            if !e.id.is_zero_run() {
                match by_id.get(&e.id) {
                    Some(&i) => chunks[i].image_offsets.push(off),
                    None => {
                        by_id.insert(e.id, chunks.len());
                        let first_piece = u32::try_from(pieces).map_err(|_| TooLarge)?;
                        chunks.push(ChunkSpec {
                            id: e.id,
                            len: e.len,
                            image_offsets: vec![off],
                            packed_offset: packed,
                            first_piece,
                        });
                        packed += e.len as u64;
                        pieces += (e.len as u64).div_ceil(payload as u64);
                    }
                }
            }
            off += e.len as u64;
        }
        Ok(Layout {
            chunks,
            payload,
            total_pieces: u32::try_from(pieces).map_err(|_| TooLarge)?,
            packed_size: packed,
            image_size: off,
        })
    }

    pub fn pieces_of(&self, chunk: usize) -> u32 {
        self.chunks[chunk].len.div_ceil(self.payload)
    }

    /// Global piece numbers of a chunk.
    pub fn piece_range(&self, chunk: usize) -> std::ops::Range<u32> {
        let first = self.chunks[chunk].first_piece;
        first..first + self.pieces_of(chunk)
    }

    /// The chunk a global piece belongs to (binary search on first pieces).
    pub fn chunk_of(&self, piece: u32) -> usize {
        self.chunks
            .partition_point(|c| c.first_piece <= piece)
            .saturating_sub(1)
    }

    /// Byte offset and length of piece `p` (global) within its chunk.
    pub fn piece_bytes(&self, chunk: usize, piece: u32) -> (u32, u32) {
        let c = &self.chunks[chunk];
        let off = (piece - c.first_piece) * self.payload;
        (off, (c.len - off).min(self.payload))
    }
}

/// A set of global piece numbers (a bitmap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PieceSet {
    bits: Vec<u64>,
    len: u32,
}

impl PieceSet {
    pub fn empty(len: u32) -> PieceSet {
        PieceSet {
            bits: vec![0; (len as usize).div_ceil(64)],
            len,
        }
    }

    pub fn full(len: u32) -> PieceSet {
        let mut s = PieceSet::empty(len);
        s.insert_range(0..len);
        s
    }

    pub fn universe(&self) -> u32 {
        self.len
    }

    pub fn contains(&self, p: u32) -> bool {
        p < self.len && self.bits[(p / 64) as usize] & (1 << (p % 64)) != 0
    }

    /// Inserts `p`; true if it was not there.
    pub fn insert(&mut self, p: u32) -> bool {
        if p >= self.len {
            return false;
        }
        let w = &mut self.bits[(p / 64) as usize];
        let was = *w & (1 << (p % 64)) != 0;
        *w |= 1 << (p % 64);
        !was
    }

    pub fn insert_range(&mut self, r: std::ops::Range<u32>) {
        for p in r.start..r.end.min(self.len) {
            self.bits[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    pub fn remove_range(&mut self, r: std::ops::Range<u32>) {
        for p in r.start..r.end.min(self.len) {
            self.bits[(p / 64) as usize] &= !(1 << (p % 64));
        }
    }

    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    pub fn union_with(&mut self, other: &PieceSet) {
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= *b;
        }
    }

    /// The pieces not in the set.
    pub fn complement(&self) -> PieceSet {
        let mut out = PieceSet::full(self.len);
        for (a, b) in out.bits.iter_mut().zip(&self.bits) {
            *a &= !*b;
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }

    /// Runs of consecutive members as (first, count): the NACK encoding.
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        for p in self.iter() {
            match out.last_mut() {
                Some((s, n)) if *s + *n == p => *n += 1,
                _ => out.push((p, 1)),
            }
        }
        out
    }

    /// The set of the given runs; runs beyond the universe are cut off
    /// (they come from the network).
    pub fn from_ranges(len: u32, ranges: &[(u32, u32)]) -> PieceSet {
        let mut s = PieceSet::empty(len);
        for &(first, n) in ranges {
            s.insert_range(first..first.saturating_add(n));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(b: u8, len: u32) -> ManifestEntry {
        ManifestEntry {
            id: if b == 0 {
                ChunkId::ZERO_RUN
            } else {
                ChunkId([b; 32])
            },
            len,
        }
    }

    #[test]
    fn unique_chunks_and_pieces() {
        let l = Layout::new(&[e(1, 2500), e(0, 5000), e(2, 1000), e(1, 2500)], 1000).unwrap();
        assert_eq!(l.chunks.len(), 2);
        assert_eq!(l.chunks[0].image_offsets, vec![0, 8500]);
        assert_eq!(l.chunks[1].image_offsets, vec![7500]);
        assert_eq!(l.chunks[1].packed_offset, 2500);
        assert_eq!(l.total_pieces, 4);
        assert_eq!(l.piece_range(1), 3..4);
        assert_eq!(l.chunk_of(2), 0);
        assert_eq!(l.chunk_of(3), 1);
        assert_eq!(l.piece_bytes(0, 2), (2000, 500));
        assert_eq!(l.image_size, 11000);
    }

    #[test]
    fn piece_set_ranges() {
        let mut s = PieceSet::empty(200);
        s.insert_range(3..7);
        s.insert(64);
        s.insert(65);
        s.insert(199);
        assert!(!s.insert(199));
        assert_eq!(s.ranges(), vec![(3, 4), (64, 2), (199, 1)]);
        assert_eq!(PieceSet::from_ranges(200, &s.ranges()), s);
        assert_eq!(s.count(), 7);
        assert_eq!(s.complement().count(), 193);
        // Out-of-universe runs from the network are ignored.
        assert_eq!(PieceSet::from_ranges(10, &[(8, u32::MAX)]).count(), 2);
    }
}
