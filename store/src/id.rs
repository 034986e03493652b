//! Chunk identifiers: BLAKE3-256 of the chunk's bytes.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

/// BLAKE3-256 of a chunk's bytes. The all-zero id is reserved for runs of
/// zero bytes, which are never stored (see [`ChunkId::ZERO_RUN`]).
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Marks a manifest entry that stands for `len` zero bytes with no stored chunk.
    pub const ZERO_RUN: ChunkId = ChunkId([0; 32]);

    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn is_zero_run(&self) -> bool {
        *self == Self::ZERO_RUN
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a chunk id is 64 hex digits")]
pub struct ParseChunkIdError;

impl FromStr for ChunkId {
    type Err = ParseChunkIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(ParseChunkIdError);
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseChunkIdError)?;
        Ok(ChunkId(out))
    }
}

/// Chunk ids are uniformly random already, so the index hashes them by
/// taking 8 of their bytes instead of running SipHash over all 32.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Hash for [u8; 32] arrives as one 32-byte write (arrays hash their
        // bytes directly); fold in whatever comes to stay correct for any input.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
}

#[derive(Default, Clone, Copy)]
pub struct BuildIdHasher;

impl BuildHasher for BuildIdHasher {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ChunkId::of(b"hello");
        let parsed: ChunkId = id.to_hex().parse().unwrap();
        assert_eq!(id, parsed);
        assert!("xyz".parse::<ChunkId>().is_err());
        assert!(!id.is_zero_run());
    }
}
