//! The store's error type. Variants name what went wrong in terms a user can
//! act on; callers at the edge (CLI, S3 adapter) map them to exit codes or S3
//! error codes.

use std::path::PathBuf;

use super::id::ChunkId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata engine error: {0}")]
    Meta(String),
    /// A networked backend (the PostgreSQL metadata, an object store) could
    /// not be reached within its retries; nothing was changed by the failed
    /// operation unless `message` says the outcome is unknown. The S3 API
    /// answers 503 so clients retry.
    #[error("{backend} backend unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    #[error("data directory {0} is in use by another strato process")]
    Locked(PathBuf),
    #[error("data directory {path} has format {found:?}, this strato understands {expected:?}")]
    Format {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("invalid bucket name {name:?}: {why}")]
    InvalidBucketName { name: String, why: &'static str },
    #[error("invalid object key: {0}")]
    InvalidKey(&'static str),
    #[error("no such bucket: {0}")]
    NoSuchBucket(String),
    #[error("bucket {0} already exists")]
    BucketAlreadyExists(String),
    #[error("bucket {0} already exists and is owned by you")]
    BucketAlreadyOwnedByYou(String),
    #[error("bucket {0} is not empty")]
    BucketNotEmpty(String),
    #[error("no such object: {bucket}/{key}")]
    NoSuchKey { bucket: String, key: String },
    #[error("no such multipart upload: {0}")]
    NoSuchUpload(String),
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("the body's MD5 does not match the Content-MD5 given")]
    BadDigest,
    #[error("invalid part: {0}")]
    InvalidPart(String),
    #[error("parts must be listed in ascending order")]
    InvalidPartOrder,
    #[error("part {part} is {size} bytes; every part but the last must be at least {min} bytes")]
    EntityTooSmall { part: u32, size: u64, min: u64 },
    #[error("range {start}-{end} is not satisfiable for an object of {size} bytes")]
    InvalidRange { start: u64, end: u64, size: u64 },
    #[error("integrity error in {object}: chunk {chunk} {what}")]
    Integrity {
        object: String,
        chunk: ChunkId,
        what: String,
    },
    #[error("chunk {0} is not in the store")]
    MissingChunk(ChunkId),
    #[error("corrupt segment {path}: {what}")]
    CorruptSegment { path: PathBuf, what: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("upload aborted: {0}")]
    Aborted(String),
    /// Another process holds the work's lease (shared-mode GC).
    #[error("busy: {0}")]
    Busy(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach a path to an `io::Error`, so every I/O failure says which file.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            path: path.into(),
            source,
        })
    }
}
