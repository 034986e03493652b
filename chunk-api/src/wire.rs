//! The JSON documents of the chunk API and the size limits both ends
//! apply. Chunk ids travel as 64 hex digits.

use serde::{Deserialize, Serialize};
use strato_store::{ChunkId, ManifestEntry, ObjectRecord};

/// Largest chunk body accepted by `PUT /chunks/{id}` (and the largest
/// frame of a batch). The chunkers cut at most a few MiB; this bounds the
/// memory one request can hold.
pub const MAX_CHUNK_LEN: usize = 64 << 20;
/// Bound on a body of hex ids, one per line (`have`, `get`, `claim`):
/// about 2 M ids.
pub const MAX_ID_LIST_BODY: usize = 128 << 20;
/// Bound on a manifest commit body (about 1.5 M chunks).
pub const MAX_MANIFEST_BODY: usize = 128 << 20;

/// Bound on a ticket request body (an audience of a few thousand nodes).
pub const MAX_TICKET_REQUEST: usize = 1 << 20;
/// Session ticket lifetime when the request names none, and the longest
/// granted: a ticket is a bearer credential for one image, keep it short.
pub const DEFAULT_TICKET_SECS: u64 = 3600;
pub const MAX_TICKET_SECS: u64 = 24 * 3600;

/// `POST /chunks/ticket/{bucket}/{key}`: who a distribution session is for.
/// Exactly one of `nodes` (chain nodes, `HOST:PORT` as the sender names
/// them) and `group` (multicast `ADDR:PORT`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TicketRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Seconds; default [`DEFAULT_TICKET_SECS`], at most [`MAX_TICKET_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<u64>,
}

/// `POST /chunks/report/{bucket}/{key}`: how a distribution session the
/// sender ran ended, node by node, so the repository (its web console) can
/// show per-node outcomes. At most [`MAX_REPORT_NODES`] nodes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SessionReport {
    /// "chain" or "multicast".
    pub kind: String,
    pub nodes: Vec<NodeOutcome>,
    /// Chunk bytes the sender sent.
    pub bytes_sent: u64,
    pub object_size: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeOutcome {
    /// The node as the sender named it (HOST:PORT).
    pub node: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub bytes_received: u64,
    pub seconds: f64,
}

pub const MAX_REPORT_NODES: usize = 4096;

/// The answer: the signed ticket (base64url text), the session's control
/// secret (hex; the ticket commits to the key derived from it) and the
/// manifest the ticket's digest was computed from, so the sender sends
/// exactly that version even if the object changes meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TicketGrant {
    pub ticket: String,
    pub control_secret: String,
    pub expires_at: u64,
    pub manifest: ManifestDoc,
}

/// The manifest format this build writes and reads. A client refuses a
/// manifest of another version instead of guessing at its fields.
pub const MANIFEST_VERSION: u32 = 1;

/// An object's manifest as the chunk API serves it
/// (`GET /chunks/manifest/{bucket}/{key}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestDoc {
    pub version: u32,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub profile: String,
    pub parts: u32,
    /// In order; an all-zero id stands for `len` zero bytes that are never stored.
    pub chunks: Vec<ManifestChunk>,
}

/// One entry of a manifest on the wire: [`ManifestEntry`] with its id in hex.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestChunk {
    #[serde(with = "hex_id")]
    pub id: ChunkId,
    pub len: u32,
}

/// Body of `PUT /chunks/manifest/{bucket}/{key}`: the object's chunks, in
/// order. A migration receiver keeps the pages it brought to the site this
/// way, so later migrations and clones can resolve them after the GC grace
/// period: unreferenced chunks are garbage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestCommit {
    pub chunks: Vec<ManifestChunk>,
}

impl From<ManifestEntry> for ManifestChunk {
    fn from(e: ManifestEntry) -> Self {
        ManifestChunk {
            id: e.id,
            len: e.len,
        }
    }
}

impl From<ManifestChunk> for ManifestEntry {
    fn from(c: ManifestChunk) -> Self {
        ManifestEntry {
            id: c.id,
            len: c.len,
        }
    }
}

/// Why a manifest document cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error(
        "manifest version {found} is not one this build reads (it reads {MANIFEST_VERSION}); \
         upgrade strato on this side"
    )]
    Version { found: u32 },
    #[error("chunks cover {covered} bytes, size is {size}")]
    Size { covered: u64, size: u64 },
}

impl ManifestDoc {
    /// The document of a stored object: its record and its manifest.
    pub fn of_record(
        bucket: &str,
        key: &str,
        rec: &ObjectRecord,
        entries: &[ManifestEntry],
    ) -> ManifestDoc {
        Self::new(
            bucket,
            key,
            rec.size,
            &rec.etag,
            &rec.profile,
            rec.parts,
            entries,
        )
    }

    /// The document of `bucket/key` with these fields, at this build's version.
    pub fn new(
        bucket: &str,
        key: &str,
        size: u64,
        etag: &str,
        profile: &str,
        parts: u32,
        entries: &[ManifestEntry],
    ) -> ManifestDoc {
        ManifestDoc {
            version: MANIFEST_VERSION,
            bucket: bucket.to_string(),
            key: key.to_string(),
            size,
            etag: etag.to_string(),
            profile: profile.to_string(),
            parts,
            chunks: entries.iter().copied().map(ManifestChunk::from).collect(),
        }
    }

    /// A known version, and chunks that cover exactly `size` bytes.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version {
                found: self.version,
            });
        }
        let covered: u64 = self.chunks.iter().map(|c| u64::from(c.len)).sum();
        if covered != self.size {
            return Err(ManifestError::Size {
                covered,
                size: self.size,
            });
        }
        Ok(())
    }

    /// The chunks as store manifest entries.
    pub fn entries(&self) -> Vec<ManifestEntry> {
        self.chunks
            .iter()
            .copied()
            .map(ManifestEntry::from)
            .collect()
    }
}

impl ManifestCommit {
    pub fn new(entries: &[ManifestEntry]) -> ManifestCommit {
        ManifestCommit {
            chunks: entries.iter().copied().map(ManifestChunk::from).collect(),
        }
    }

    pub fn entries(&self) -> Vec<ManifestEntry> {
        self.chunks
            .iter()
            .copied()
            .map(ManifestEntry::from)
            .collect()
    }
}

/// Chunk ids as 64 hex digits in JSON.
mod hex_id {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use strato_store::ChunkId;

    pub fn serialize<S: Serializer>(id: &ChunkId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChunkId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|_| D::Error::custom(format!("{s:?} is not a chunk id (64 hex digits)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> ManifestDoc {
        let entries = [
            ManifestEntry {
                id: ChunkId::of(b"a"),
                len: 1,
            },
            ManifestEntry {
                id: ChunkId::ZERO_RUN,
                len: 4096,
            },
        ];
        ManifestDoc::new("b", "k", 4097, "etag", "block:4096", 0, &entries)
    }

    #[test]
    fn ids_travel_as_hex_and_round_trip() {
        let d = doc();
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(&ChunkId::of(b"a").to_hex()), "{json}");
        assert!(json.contains(&"0".repeat(64)), "{json}");
        let back: ManifestDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.entries()[1].id, ChunkId::ZERO_RUN);
        let bad = json.replace(&ChunkId::of(b"a").to_hex(), "xyz");
        let e = serde_json::from_str::<ManifestDoc>(&bad).unwrap_err();
        assert!(e.to_string().contains("is not a chunk id"), "{e}");
    }

    #[test]
    fn check_refuses_unknown_versions_and_wrong_sizes() {
        let mut d = doc();
        assert_eq!(d.check(), Ok(()));
        d.version = MANIFEST_VERSION + 1;
        let e = d.check().unwrap_err();
        assert_eq!(
            e,
            ManifestError::Version {
                found: MANIFEST_VERSION + 1
            }
        );
        assert!(e.to_string().contains("upgrade strato"), "{e}");
        let mut d = doc();
        d.size += 1;
        assert!(matches!(d.check(), Err(ManifestError::Size { .. })));
    }
}
