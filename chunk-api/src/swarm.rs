//! The swarm tracker's wire types (`POST /chunks/swarm/{bucket}/{key}`)
//! and the limits both ends apply.
//!
//! A node joining the swarm of an object announces where its peers reach
//! it, which manifest entries it holds (a bitmap over manifest indices),
//! whether it is done and what it has moved so far. The tracker answers
//! with the manifest (on first join, or when the node's digest is not the
//! current one), a bounded random subset of the other peers with their
//! bitmaps, and the swarm's session secret, from which peers derive the
//! key that authenticates them to each other. The tracker never carries
//! chunk data.

use serde::{Deserialize, Serialize};
use strato_store::ManifestEntry;

use crate::wire::ManifestDoc;

/// Version of the announce/answer documents. A tracker refuses another.
pub const SWARM_VERSION: u32 = 1;
/// Most peers one answer lists (a random subset of the swarm).
pub const MAX_PEERS_RETURNED: usize = 64;
/// Largest manifest a swarm is run for (entries); the bitmap is bounded
/// by it: 4 M entries are 512 KiB of bitmap, 1 MiB of hex.
pub const MAX_SWARM_CHUNKS: usize = 4 << 20;
/// Bound on an announce body: the bitmap in hex plus a little JSON.
pub const MAX_ANNOUNCE_BODY: usize = MAX_SWARM_CHUNKS / 4 + (64 << 10);

/// Body of `POST /chunks/swarm/{bucket}/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Announce {
    pub version: u32,
    /// `IP:PORT` other peers connect to.
    pub peer: String,
    /// Hex BLAKE3 digest of the manifest the node works on ([`manifest_digest`]);
    /// absent on first join (the answer then carries the manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// Hex bitmap over manifest indices (bit i of byte i/8, LSB first),
    /// exactly `ceil(n/8)` bytes; empty when `manifest_digest` is absent.
    #[serde(default)]
    pub have: String,
    #[serde(default)]
    pub done: bool,
    /// The node is leaving: the tracker forgets it now.
    #[serde(default)]
    pub leaving: bool,
    #[serde(default)]
    pub bytes_from_peers: u64,
    #[serde(default)]
    pub bytes_from_repository: u64,
    /// An operator watching the swarm (`strato propagate --method swarm`),
    /// not a member: nothing is recorded, `peer` and `have` are ignored, and
    /// the answer lists the members and those that left or aged out, with
    /// their last state and bytes (at most [`MAX_PEERS_RETURNED`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
}

/// One other member of the swarm, as the tracker last heard of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer: String,
    /// Hex bitmap, as announced (empty: holds nothing yet).
    pub have: String,
    pub done: bool,
    /// Watch answers only: the member left (or aged out) in this state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
    /// Watch answers only: what the member last announced it had moved.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_from_peers: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_from_repository: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The tracker's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnnounceReply {
    pub version: u32,
    /// Hex digest of the object's current manifest.
    pub manifest_digest: String,
    /// The manifest, when the announce did not name the current digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestDoc>,
    /// Hex, 32 bytes: the swarm's session secret (peers prove they know it).
    pub secret: String,
    pub peers: Vec<PeerInfo>,
    /// Seconds between announces the tracker expects; a peer silent for
    /// `peer_ttl_secs` is forgotten.
    pub interval_secs: u64,
    pub peer_ttl_secs: u64,
}

/// BLAKE3 over the manifest's entries (id and length, in order): the
/// swarm's identity, and what both peers of a connection must agree on.
/// Hashed in blocks of 64 K entries, then over the blocks' hashes, so a
/// large manifest is never copied whole.
pub fn manifest_digest(entries: &[ManifestEntry]) -> [u8; 32] {
    use strato_store::ChunkId;
    let mut top = Vec::with_capacity(40 + 32 * (entries.len() / 65536 + 1));
    top.extend_from_slice(b"strato swarm manifest v1");
    top.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    let mut block = Vec::with_capacity(36 * 65536);
    for part in entries.chunks(65536) {
        block.clear();
        for e in part {
            block.extend_from_slice(&e.id.0);
            block.extend_from_slice(&e.len.to_le_bytes());
        }
        top.extend_from_slice(&ChunkId::of(&block).0);
    }
    ChunkId::of(&top).0
}

/// Bytes of a bitmap over `n` manifest entries.
pub fn bitmap_len(n: usize) -> usize {
    n.div_ceil(8)
}

/// Why a bitmap is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("bitmap is not hex")]
    NotHex,
    #[error("bitmap has {found} bytes, the manifest's {entries} entries need {want}")]
    Length {
        found: usize,
        want: usize,
        entries: usize,
    },
    #[error("bitmap sets bits past the manifest's {0} entries")]
    Trailing(usize),
}

/// A hex bitmap over `n` entries, checked: hex, exact length, no bits set
/// past `n`.
pub fn decode_bitmap(hex_text: &str, n: usize) -> Result<Vec<u8>, BitmapError> {
    let want = bitmap_len(n);
    // Checked before decoding, so a huge string costs nothing.
    if hex_text.len() != 2 * want {
        return Err(BitmapError::Length {
            found: hex_text.len() / 2,
            want,
            entries: n,
        });
    }
    let bits = hex::decode(hex_text).map_err(|_| BitmapError::NotHex)?;
    if !n.is_multiple_of(8) {
        if let Some(last) = bits.last() {
            if last >> (n % 8) != 0 {
                return Err(BitmapError::Trailing(n));
            }
        }
    }
    Ok(bits)
}

/// Whether bit `i` is set.
pub fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

pub fn set_bit(bits: &mut [u8], i: usize) {
    if let Some(b) = bits.get_mut(i / 8) {
        *b |= 1 << (i % 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_are_checked_for_length_hex_and_trailing_bits() {
        let mut bits = vec![0u8; bitmap_len(10)];
        set_bit(&mut bits, 0);
        set_bit(&mut bits, 9);
        let text = hex::encode(&bits);
        assert_eq!(decode_bitmap(&text, 10).unwrap(), bits);
        assert!(bit(&bits, 9) && !bit(&bits, 8) && !bit(&bits, 100));
        assert!(matches!(
            decode_bitmap(&text, 20),
            Err(BitmapError::Length { .. })
        ));
        assert_eq!(decode_bitmap("zz00", 10), Err(BitmapError::NotHex));
        // Bit 10 of a 10-entry manifest does not exist.
        assert_eq!(decode_bitmap("0104", 10), Err(BitmapError::Trailing(10)));
        assert_eq!(decode_bitmap("", 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn digest_depends_on_ids_lengths_and_order() {
        use strato_store::ChunkId;
        let a = ManifestEntry {
            id: ChunkId::of(b"a"),
            len: 1,
        };
        let b = ManifestEntry {
            id: ChunkId::of(b"b"),
            len: 1,
        };
        let d = manifest_digest(&[a, b]);
        assert_ne!(d, manifest_digest(&[b, a]));
        assert_ne!(d, manifest_digest(&[a, ManifestEntry { len: 2, ..b }]));
        assert_eq!(d, manifest_digest(&[a, b]));
    }
}
