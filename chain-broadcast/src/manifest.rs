//! What travels down a chain: an object's ordered list of chunks.

use std::collections::HashMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// BLAKE3-256 of a chunk's bytes. The chain trusts nothing else: every hop
/// recomputes it before storing or forwarding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One manifest entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// Content id.
    pub id: ChunkId,
    /// Length in bytes.
    pub len: u32,
}

/// The ordered chunks of one object. The same id may appear several times
/// (zero blocks); it is sent once and written at every offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Chunks in object order.
    pub chunks: Vec<ChunkRef>,
}

impl Manifest {
    /// A manifest from entries in object order.
    pub fn new(chunks: Vec<ChunkRef>) -> Self {
        Manifest { chunks }
    }

    /// Splits `data` into fixed-size chunks (the last one may be shorter) and
    /// returns the manifest with the chunk bytes. For tests and benchmarks;
    /// real callers get manifests from their store.
    pub fn from_fixed_chunks(data: &Bytes, chunk_size: usize) -> (Manifest, Vec<Bytes>) {
        let chunk_size = chunk_size.max(1);
        let mut chunks = Vec::new();
        let mut parts = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let end = (off + chunk_size).min(data.len());
            let part = data.slice(off..end);
            chunks.push(ChunkRef {
                id: ChunkId::of(&part),
                len: part.len() as u32,
            });
            parts.push(part);
            off = end;
        }
        (Manifest { chunks }, parts)
    }

    /// Object size in bytes.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True if the object has no chunks.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Distinct ids in first-occurrence order.
    pub fn distinct(&self) -> Vec<ChunkRef> {
        let mut seen = std::collections::HashSet::with_capacity(self.chunks.len());
        self.chunks
            .iter()
            .filter(|c| seen.insert(c.id))
            .copied()
            .collect()
    }

    /// Length of each distinct id. Entries with one id and different
    /// lengths make a manifest invalid; see [`Manifest::validate`].
    pub fn lengths(&self) -> HashMap<ChunkId, u32> {
        self.chunks.iter().map(|c| (c.id, c.len)).collect()
    }

    /// Byte offset of every entry, in manifest order.
    pub fn offsets(&self) -> Vec<u64> {
        let mut off = 0u64;
        self.chunks
            .iter()
            .map(|c| {
                let o = off;
                off += u64::from(c.len);
                o
            })
            .collect()
    }

    /// Checks that each id always has the same length and that no chunk is
    /// larger than `max_chunk`.
    pub fn validate(&self, max_chunk: u32) -> Result<(), String> {
        let mut lens: HashMap<ChunkId, u32> = HashMap::with_capacity(self.chunks.len());
        for c in &self.chunks {
            if c.len > max_chunk {
                return Err(format!(
                    "chunk {} is {} bytes, more than the {} byte limit",
                    c.id, c.len, max_chunk
                ));
            }
            if let Some(prev) = lens.insert(c.id, c.len) {
                if prev != c.len {
                    return Err(format!(
                        "chunk {} listed with lengths {prev} and {}",
                        c.id, c.len
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Everything a node learns about a transfer from its HELLO frame, minus the
/// chain itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferInfo {
    /// Chosen by the sender; the same on every hop.
    pub transfer_id: u64,
    /// Object name (for a file sink: the output file name).
    pub name: String,
    /// The object's chunks.
    pub manifest: std::sync::Arc<Manifest>,
}
