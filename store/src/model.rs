//! Serde types of everything the store persists in its metadata engine.
//! Kept apart from the algorithms; every value starts with a format version
//! byte so a later release can read (and upgrade) what this one wrote.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::id::ChunkId;

pub const RECORD_FORMAT: u8 = 1;

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_FORMAT];
    postcard::to_io(v, &mut out).map_err(|e| StoreError::Meta(format!("encode: {e}")))?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&RECORD_FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Meta(format!("decode: {e}")))
        }
        Some((v, _)) => Err(StoreError::Meta(format!("unknown record format {v}"))),
        None => Err(StoreError::Meta("empty record".into())),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BucketRecord {
    pub owner: String,
    pub created_ms: u64,
}

/// What a caller knows of an object it commits from chunks the store
/// holds (see `Store::commit_object`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: String,
    pub profile: String,
    pub parts: u32,
}

/// One piece of an object: a stored chunk, or (id = ZERO_RUN) `len` zero bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub id: ChunkId,
    pub len: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    pub size: u64,
    /// S3 ETag without quotes: hex MD5, or `hex(md5 of part md5s)-N`.
    pub etag: String,
    pub modified_ms: u64,
    /// Chunking profile(s) used, e.g. `block:16384`.
    pub profile: String,
    /// Opaque attributes owned by the caller (the S3 layer keeps headers here).
    pub attrs: Vec<u8>,
    /// Number of multipart parts, 0 for a single PUT.
    pub parts: u32,
}

/// The ordered chunk list of an object, kept apart from its [`ObjectRecord`]
/// so listings never decode manifests. `etag`/`modified_ms` tie it to the
/// record it was written with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub etag: String,
    pub modified_ms: u64,
    pub chunks: Vec<ManifestEntry>,
}

/// Reference state of a stored chunk. `refs` counts manifest entries (objects
/// and uploaded parts) naming it; `zero_since_ms` is when it last dropped to
/// zero (GC may reclaim it a grace period later unless revived).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkState {
    pub refs: u64,
    pub len: u32,
    pub zero_since_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadRecord {
    pub bucket: String,
    pub key: String,
    pub initiated_ms: u64,
    pub attrs: Vec<u8>,
    pub chunking: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartRecord {
    pub size: u64,
    pub md5: [u8; 16],
    pub modified_ms: u64,
    pub profile: String,
    pub chunks: Vec<ManifestEntry>,
}

/// What `PartRecord`'s fixed layout has no room for: the caller's opaque
/// attributes of one uploaded part (the S3 layer keeps the part's verified
/// checksums here), in `Table::PartAttrs` under the part's key. `md5` and
/// `modified_ms` tie it to the `PartRecord` written in the same transaction,
/// so a reader never pairs one upload of a part with another's attributes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartAttrsRecord {
    pub md5: [u8; 16],
    pub modified_ms: u64,
    pub attrs: Vec<u8>,
}

/// One part of a completed multipart object, in part order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectPart {
    pub size: u64,
    /// The part's opaque attributes as uploaded (see [`PartAttrsRecord`]).
    pub attrs: Vec<u8>,
}

/// The part boundaries of a multipart object, in `Table::ObjectParts` under
/// the object's key: written in the commit transaction of
/// `complete_upload`, deleted with the object or when it is replaced.
/// A table of its own because `ObjectRecord`'s postcard layout is fixed in
/// existing repositories; `etag`/`modified_ms` tie it to its record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectParts {
    pub etag: String,
    pub modified_ms: u64,
    pub parts: Vec<ObjectPart>,
}

pub fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The bucket and key of an [`object_key`], for error messages.
pub fn split_object_key(okey: &[u8]) -> (String, String) {
    let (b, k) = match okey.iter().position(|&c| c == 0) {
        Some(i) => (&okey[..i], &okey[i + 1..]),
        None => (okey, &okey[..0]),
    };
    (
        String::from_utf8_lossy(b).into_owned(),
        String::from_utf8_lossy(k).into_owned(),
    )
}

pub fn part_key(upload_id: &str, part: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(upload_id.len() + 5);
    k.extend_from_slice(upload_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&part.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let r = ChunkState {
            refs: 3,
            len: 4096,
            zero_since_ms: 0,
        };
        let bytes = encode(&r).unwrap();
        assert_eq!(decode::<ChunkState>(&bytes).unwrap(), r);
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(decode::<ChunkState>(&future).is_err());
    }
}
