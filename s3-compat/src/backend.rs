//! The contract between the S3 protocol layer and whatever stores objects.
//!
//! Everything here is plain data plus one async trait; nothing refers to the
//! HTTP layer or to `s3s`, so the root crate can implement [`Backend`] for its
//! store without depending on protocol details.

use std::collections::BTreeMap;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

/// A stream of body bytes. If it yields an `Err`, the consumer must store
/// nothing: the upload is incomplete or failed verification.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

/// Why a request or response body stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The client sent fewer bytes than it declared (Content-Length or
    /// x-amz-decoded-content-length).
    #[error("body ended after {received} of {expected} declared bytes")]
    Incomplete { expected: u64, received: u64 },
    /// The client sent more bytes than it declared.
    #[error("body is longer than the declared {expected} bytes")]
    TooLong { expected: u64 },
    /// The body is larger than the configured maximum object size.
    #[error("body exceeds the maximum allowed size of {limit} bytes")]
    TooLarge { limit: u64 },
    /// An `x-amz-checksum-*` value did not match the received bytes.
    #[error("{algorithm} checksum mismatch")]
    ChecksumMismatch { algorithm: String },
    /// `Content-MD5` did not match the received bytes (raised by backends).
    #[error("Content-MD5 mismatch")]
    BadDigest,
    /// An aws-chunked signed chunk was larger than the configured cap.
    #[error("signed chunk of {size} bytes exceeds the cap of {limit} bytes")]
    ChunkTooLarge { size: u64, limit: u64 },
    /// An aws-chunked chunk signature did not verify.
    #[error("chunk signature does not match")]
    SignatureMismatch,
    /// The body's SHA-256 differs from `x-amz-content-sha256`.
    #[error("body SHA-256 does not match x-amz-content-sha256")]
    Sha256Mismatch,
    /// The transport or the chunked-encoding layer failed.
    #[error("body transport error: {0}")]
    Transport(String),
}

/// Errors a [`Backend`] reports; each maps to one S3 error code and status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("the specified bucket does not exist")]
    NoSuchBucket,
    #[error("the specified key does not exist")]
    NoSuchKey,
    #[error("the specified multipart upload does not exist")]
    NoSuchUpload,
    #[error("the requested bucket name is not available")]
    BucketAlreadyExists,
    #[error("the bucket is already owned by you")]
    BucketAlreadyOwnedByYou,
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    #[error("a precondition does not hold")]
    PreconditionFailed,
    #[error("the Content-MD5 does not match the received body")]
    BadDigest,
    #[error("one or more of the specified parts could not be found or its ETag does not match")]
    InvalidPart,
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    #[error("a non-final part is smaller than the minimum allowed size")]
    EntityTooSmall,
    #[error("object exceeds the maximum allowed size")]
    EntityTooLarge,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("the specified bucket name is not valid")]
    InvalidBucketName,
    #[error("the key is too long")]
    KeyTooLong,
    #[error("the request body stream failed: {0}")]
    Body(#[from] BodyError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A backend the store depends on (named, e.g. "postgres") cannot be
    /// reached for now; clients should retry (503).
    #[error("{backend} backend unavailable: {message}")]
    Unavailable { backend: String, message: String },
}

/// A bucket as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    pub name: String,
    /// User id of the owner (see [`crate::User::id`]).
    pub owner: String,
    pub created: SystemTime,
}

/// Object attributes that the protocol layer sets and reads back; the store
/// persists them opaquely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    pub content_type: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub cache_control: Option<String>,
    /// The `Expires` header exactly as the client sent it.
    pub expires: Option<String>,
    /// `x-amz-meta-*` without the prefix; names lower-cased.
    pub user_metadata: BTreeMap<String, String>,
    /// Verified whole-object checksums: algorithm name ("CRC32", "CRC32C",
    /// "CRC64NVME", "SHA1", "SHA256") to base64 value. A multipart object's
    /// COMPOSITE checksum is `base64(H(part checksums))-N`.
    pub checksums: BTreeMap<String, String>,
    /// `FULL_OBJECT` or `COMPOSITE` (multipart objects); `None` reads as
    /// `FULL_OBJECT` when there are checksums (single PUTs, older objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
    /// Of a multipart upload: the algorithm asked for at
    /// CreateMultipartUpload, which every part is checksummed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
}

/// An object as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Without quotes: MD5 hex, or `md5-of-md5s-N` for multipart objects.
    pub etag: String,
    pub last_modified: SystemTime,
    pub attrs: ObjectAttrs,
}

/// Options of a write that the backend must honour atomically at commit.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// `If-Match`: commit only if the current object's ETag (without quotes)
    /// equals this; `Some("*")` means "only if an object exists".
    pub if_match: Option<String>,
    /// `If-None-Match`: `Some("*")` commits only if no object exists under
    /// the key; a list of ETags (without quotes, comma-separated) commits
    /// only if the current object's ETag is none of them.
    pub if_none_match: Option<String>,
    /// Expected MD5 of the body (from `Content-MD5`); mismatch → `BadDigest`.
    pub content_md5: Option<[u8; 16]>,
    /// Chunking profile requested via `x-amz-meta-strato-chunking`.
    pub chunking: Option<String>,
    /// Checksums that become known only when the body has ended (sent as
    /// aws-chunked trailers). After the body stream has ended without error
    /// and before committing, the backend merges `late_checksums.take()` into
    /// `attrs.checksums`.
    pub late_checksums: LateChecksums,
    /// CompleteMultipartUpload only: the object's checksum type, which the
    /// backend stores in `attrs.checksum_type` (with `late_checksums`, the
    /// checksum the protocol layer computed from the parts).
    pub checksum_type: Option<String>,
}

/// A slot the protocol layer fills with verified trailer checksums when the
/// body stream ends; see [`PutOptions::late_checksums`].
#[derive(Debug, Clone, Default)]
pub struct LateChecksums(Arc<Mutex<BTreeMap<String, String>>>);

impl LateChecksums {
    /// The checksums published so far (algorithm name → base64). They are
    /// published once, when the body ends; reading does not clear them, so
    /// calling this more than once is fine.
    pub fn take(&self) -> BTreeMap<String, String> {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn insert(&self, algorithm: &str, value: String) {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        g.insert(algorithm.to_owned(), value);
    }
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    /// MD5 hex of the part, without quotes.
    pub etag: String,
    pub size: u64,
    pub last_modified: SystemTime,
    /// The part's verified checksums (algorithm name to base64), replaced
    /// with the part when it is uploaded again.
    pub checksums: BTreeMap<String, String>,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub initiated: SystemTime,
    /// `ObjectAttrs::checksum_algorithm` / `checksum_type` of the upload.
    pub checksum_algorithm: Option<String>,
    pub checksum_type: Option<String>,
}

/// One part of a stored multipart object, in part order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPartInfo {
    pub size: u64,
    /// The part's checksums as uploaded.
    pub checksums: BTreeMap<String, String>,
}

/// Storage operations the S3 layer needs. Implementations must be safe to
/// call concurrently. Listing is in raw lexicographic key order; delimiters,
/// markers and encodings are the protocol layer's job.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn list_buckets(&self, owner: &str) -> Result<Vec<BucketInfo>, BackendError>;
    /// Errors: `BucketAlreadyExists` (someone else's), `BucketAlreadyOwnedByYou`.
    async fn create_bucket(&self, owner: &str, name: &str) -> Result<(), BackendError>;
    /// Errors: `NoSuchBucket`.
    async fn head_bucket(&self, name: &str) -> Result<BucketInfo, BackendError>;
    /// Errors: `NoSuchBucket`, `BucketNotEmpty`.
    async fn delete_bucket(&self, name: &str) -> Result<(), BackendError>;

    /// Stores `body` under `bucket/key`, computing the MD5 ETag. If the body
    /// yields an error, nothing is stored and that error is returned (as
    /// `BackendError::Body` or any other variant). Before committing, merge
    /// `opts.late_checksums.take()` into `attrs.checksums`; the returned
    /// `ObjectInfo.attrs` should be what was stored.
    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        attrs: ObjectAttrs,
        opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError>;
    /// `range`, when given, lies within the object as last seen by
    /// `head_object` (the caller validated it); if the object has changed
    /// size since, clamping or an error are both fine.
    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectInfo, ByteStream), BackendError>;
    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectInfo, BackendError>;
    /// Idempotent: deleting a missing key succeeds.
    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), BackendError>;
    /// `attrs == None` keeps the source's attributes (COPY directive).
    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        attrs: Option<ObjectAttrs>,
        opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError>;
    /// Keys starting with `prefix`, strictly after `start_after`, in
    /// lexicographic byte order, at most `limit`; the bool says whether more
    /// keys follow. `start_after` need not be an existing key: to skip a
    /// whole common prefix `p` the caller passes `p` followed by U+10FFFF.
    async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ObjectInfo>, bool), BackendError>;

    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        attrs: ObjectAttrs,
        opts: PutOptions,
    ) -> Result<String, BackendError>;
    /// Errors: `NoSuchUpload`, `BadDigest`, body errors.
    async fn upload_part(
        &self,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
    ) -> Result<PartInfo, BackendError>;
    /// [`Backend::upload_part`] that also keeps the part's checksums: once
    /// the body has ended cleanly, `checksums.take()` holds them (verified by
    /// the protocol layer); they are stored atomically with the part and
    /// returned in [`PartInfo::checksums`] here and by `list_parts`.
    /// The default stores none (for backends that keep no checksums).
    async fn upload_part_checked(
        &self,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
        checksums: LateChecksums,
    ) -> Result<PartInfo, BackendError> {
        let _ = checksums;
        self.upload_part(upload_id, part_number, body, content_md5)
            .await
    }
    async fn upload_part_copy(
        &self,
        upload_id: &str,
        part_number: u32,
        src_bucket: &str,
        src_key: &str,
        range: Option<Range<u64>>,
    ) -> Result<PartInfo, BackendError>;
    async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, BackendError>;
    /// Checks that parts exist with those ETags, ascend, and that non-final
    /// parts are at least 5 MiB; computes the `md5-of-md5s-N` ETag.
    /// `opts` carries the CompleteMultipartUpload request's conditional-write
    /// headers (`If-Match`, `If-None-Match: *`), checked atomically with the
    /// commit like [`Backend::put_object`]'s, and the object's checksum:
    /// merge `opts.late_checksums.take()` into the upload's
    /// `attrs.checksums` and set `attrs.checksum_type` to
    /// `opts.checksum_type`. Keep the parts' sizes and checksums for
    /// [`Backend::object_parts`].
    /// Errors: `InvalidPart`, `InvalidPartOrder`, `EntityTooSmall`, `NoSuchUpload`,
    /// `PreconditionFailed`.
    async fn complete_multipart(
        &self,
        upload_id: &str,
        parts: Vec<(u32, String)>,
        opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError>;
    async fn abort_multipart(&self, upload_id: &str) -> Result<(), BackendError>;
    /// The object and, for a multipart object whose part boundaries the
    /// backend kept, its parts in order (`None`: single-part, or not kept).
    /// Both describe the same version of the object.
    async fn object_parts(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, Option<Vec<ObjectPartInfo>>), BackendError> {
        Ok((self.head_object(bucket, key).await?, None))
    }
    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>, BackendError>;
}
