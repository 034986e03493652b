//! The store behind the S3 protocol layer: `s3_compat::Backend` for `Store`.
//!
//! Store calls are blocking (file I/O, hashing), so each runs on tokio's
//! blocking pool. Bodies cross between the async side and the blocking side
//! through small bounded channels: memory stays bounded by a few chunks per
//! request however large the object.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use s3_compat::{
    Backend, BackendError, BodyError, BucketInfo, ByteStream, LateChecksums, ObjectAttrs,
    ObjectInfo, ObjectPartInfo, PartInfo, PutOptions, UploadInfo,
};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::store::{
    Committed, ObjectRecord, Precondition, ProfileChoice, Store, StoreError, Target, UploadRecord,
};

/// Bytes a GET keeps read and verified ahead of the socket: two of the
/// store reader's 4 MiB batches, so the next batch is read and hashed while
/// the socket drains the last one (with a bound of four pieces, a 64 KiB
/// chunk size left the socket idle for every batch read). Counted in bytes
/// because chunks run from 4 KiB to 1 MiB.
const READ_AHEAD_BYTES: usize = 8 << 20;
/// Pieces cross to the reactor in groups of about this many bytes: one
/// wakeup per group instead of one per chunk. The first groups are smaller
/// (from 64 KiB, doubling) so the first bytes leave at once.
const READ_GROUP_BYTES: usize = 1 << 20;
const FIRST_READ_GROUP_BYTES: usize = 64 << 10;
/// Bytes of a PUT body read off the socket ahead of the chunker: the
/// reactor keeps reading (and the client keeps sending) while the writer
/// chunks and hashes. Four pieces of hyper's small body frames filled at
/// once and stalled the socket.
const WRITE_AHEAD_BYTES: usize = 8 << 20;
/// Body frames ready at once cross to the writer as one message.
const WRITE_GROUP_PIECES: usize = 64;

#[derive(Clone)]
pub struct StoreBackend {
    store: Store,
}

impl StoreBackend {
    pub fn new(store: Store) -> StoreBackend {
        StoreBackend { store }
    }
}

fn map_err(e: StoreError) -> BackendError {
    match e {
        StoreError::NoSuchBucket(_) => BackendError::NoSuchBucket,
        StoreError::NoSuchKey { .. } => BackendError::NoSuchKey,
        StoreError::NoSuchUpload(_) => BackendError::NoSuchUpload,
        StoreError::BucketAlreadyExists(_) => BackendError::BucketAlreadyExists,
        StoreError::BucketAlreadyOwnedByYou(_) => BackendError::BucketAlreadyOwnedByYou,
        StoreError::BucketNotEmpty(_) => BackendError::BucketNotEmpty,
        StoreError::PreconditionFailed => BackendError::PreconditionFailed,
        StoreError::BadDigest => BackendError::BadDigest,
        StoreError::InvalidPart(_) => BackendError::InvalidPart,
        StoreError::InvalidPartOrder => BackendError::InvalidPartOrder,
        StoreError::EntityTooSmall { .. } => BackendError::EntityTooSmall,
        StoreError::InvalidBucketName { .. } => BackendError::InvalidBucketName,
        StoreError::InvalidKey(why) if why.contains("1024") => BackendError::KeyTooLong,
        StoreError::InvalidKey(why) => BackendError::InvalidArgument(why.to_string()),
        StoreError::InvalidArgument(why) => BackendError::InvalidArgument(why),
        StoreError::InvalidRange { start, end, size } => BackendError::InvalidArgument(format!(
            "range {start}-{end} outside an object of {size} bytes"
        )),
        StoreError::Unavailable { backend, message } => BackendError::Unavailable {
            backend: backend.to_string(),
            message,
        },
        other => {
            tracing::error!("store error: {other}");
            BackendError::Internal(other.to_string())
        }
    }
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn encode_attrs(attrs: &ObjectAttrs) -> Vec<u8> {
    serde_json::to_vec(attrs).unwrap_or_default()
}

fn decode_attrs(raw: &[u8]) -> ObjectAttrs {
    if raw.is_empty() {
        return ObjectAttrs::default();
    }
    serde_json::from_slice(raw).unwrap_or_default()
}

/// A part's opaque store attributes: its verified checksums as JSON (none:
/// empty, so parts without checksums cost no extra record).
fn encode_part_sums(sums: &BTreeMap<String, String>) -> Vec<u8> {
    if sums.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(sums).unwrap_or_default()
    }
}

fn decode_part_sums(raw: &[u8]) -> BTreeMap<String, String> {
    if raw.is_empty() {
        return BTreeMap::new();
    }
    serde_json::from_slice(raw).unwrap_or_default()
}

fn object_info(bucket: &str, key: &str, rec: &ObjectRecord) -> ObjectInfo {
    ObjectInfo {
        bucket: bucket.to_string(),
        key: key.to_string(),
        size: rec.size,
        etag: rec.etag.clone(),
        last_modified: time(rec.modified_ms),
        attrs: decode_attrs(&rec.attrs),
    }
}

fn precondition(opts: &PutOptions) -> Precondition {
    if let Some(list) = &opts.if_none_match {
        Precondition::IfNoneMatch(list.clone())
    } else if let Some(etag) = &opts.if_match {
        Precondition::IfMatch(etag.clone())
    } else {
        Precondition::None
    }
}

fn chunking(opts: &PutOptions) -> Result<ProfileChoice, BackendError> {
    match &opts.chunking {
        None => Ok(ProfileChoice::Auto),
        Some(s) => s
            .parse()
            .map_err(|e| BackendError::InvalidArgument(format!("{e}"))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(map_err),
        Err(e) => Err(BackendError::Internal(format!("store task failed: {e}"))),
    }
}

enum Feed {
    /// Pieces in order, holding their share of the write-ahead budget until
    /// the writer has taken them.
    Data(Vec<Bytes>, Option<OwnedSemaphorePermit>),
    /// The body ended cleanly; commit with these attributes.
    Finish(Vec<u8>),
}

/// Pump `body` into a store writer for `target` on the blocking pool. The
/// writer commits only after the body has ended cleanly; any body error
/// abandons the write (its chunks become garbage for GC), so nothing is stored.
async fn ingest(
    store: Store,
    target: Target,
    choice: ProfileChoice,
    body: ByteStream,
    expected_md5: Option<[u8; 16]>,
    attrs: impl FnOnce() -> Vec<u8>,
) -> Result<Committed, BackendError> {
    let (tx, mut rx) = mpsc::channel::<Feed>(WRITE_GROUP_PIECES);
    let budget = Arc::new(Semaphore::new(WRITE_AHEAD_BYTES));
    let worker = tokio::task::spawn_blocking(move || -> Result<Committed, StoreError> {
        let _span = tracing::debug_span!("put_writer").entered();
        let mut w = store.writer(target, choice)?;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Feed::Data(group, _permit) => {
                    for b in group {
                        w.write(b)?;
                    }
                }
                Feed::Finish(attrs) => return w.finish(attrs, expected_md5),
            }
        }
        Err(StoreError::Aborted("request body ended early".into()))
    });
    let mut body_error: Option<BodyError> = None;
    // Whatever frames are ready at once, without waiting for more.
    let mut body = body.ready_chunks(WRITE_GROUP_PIECES);
    'read: while let Some(items) = body.next().await {
        let mut group = Vec::with_capacity(items.len());
        let mut bytes = 0usize;
        for item in items {
            match item {
                Ok(b) => {
                    bytes += b.len();
                    group.push(b);
                }
                Err(e) => {
                    // Nothing commits without Finish: what went before is
                    // abandoned with the write.
                    body_error = Some(e);
                    break 'read;
                }
            }
        }
        // Fails only if the budget is closed, which nothing does.
        let permit = match u32::try_from(bytes.min(WRITE_AHEAD_BYTES)) {
            Ok(n) => budget.clone().acquire_many_owned(n).await.ok(),
            Err(_) => None,
        };
        if tx.send(Feed::Data(group, permit)).await.is_err() {
            break; // the writer failed; its error is reported below
        }
    }
    if body_error.is_none() {
        let _ = tx.send(Feed::Finish(attrs())).await;
    }
    drop(tx);
    let result = worker
        .await
        .map_err(|e| BackendError::Internal(format!("store task failed: {e}")));
    if let Some(e) = body_error {
        return Err(BackendError::Body(e));
    }
    result?.map_err(map_err)
}

/// Pieces on their way to the socket, holding their share of the read-ahead.
type Ahead = (Vec<Result<Bytes, BodyError>>, Option<OwnedSemaphorePermit>);

/// Stream a store reader out through a channel bounded in bytes: the
/// reader (file reads and verification, on the blocking pool) runs up to
/// `READ_AHEAD_BYTES` ahead of the client. A group gives its bytes back to
/// the budget when the response body takes it.
fn stream_reader(reader: crate::store::ObjectReader) -> ByteStream {
    let (tx, rx) = mpsc::channel::<Ahead>(READ_AHEAD_BYTES / READ_GROUP_BYTES + 1);
    let budget = Arc::new(Semaphore::new(READ_AHEAD_BYTES));
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _span = tracing::debug_span!("get_read_ahead").entered();
        let mut pieces = reader.map(|piece| {
            piece.map_err(|e| {
                tracing::error!("read failed mid-stream: {e}");
                BodyError::Transport(e.to_string())
            })
        });
        let mut group = Vec::new();
        let mut bytes = 0usize;
        let mut group_bytes = FIRST_READ_GROUP_BYTES;
        loop {
            let next = pieces.next();
            // An error ends the stream: it goes out after the pieces before it.
            let last = !matches!(next, Some(Ok(_)));
            if let Some(item) = next {
                bytes += item.as_ref().map_or(0, Bytes::len);
                group.push(item);
            }
            if group.is_empty() || (!last && bytes < group_bytes) {
                if last {
                    break;
                }
                continue;
            }
            // Waits while the client is behind; fails only if the budget is
            // closed, which nothing does.
            let permit = u32::try_from(bytes.min(READ_AHEAD_BYTES))
                .ok()
                .and_then(|n| rt.block_on(budget.clone().acquire_many_owned(n)).ok());
            if tx
                .blocking_send((std::mem::take(&mut group), permit))
                .is_err()
                || last
            {
                break; // client went away, or the stream is complete
            }
            bytes = 0;
            group_bytes = (group_bytes * 2).min(READ_GROUP_BYTES);
        }
    });
    Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .flat_map(|(group, _permit)| futures::stream::iter(group)),
    )
}

impl StoreBackend {
    /// Run `f` on the store off the reactor: redb and sled calls block.
    async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let store = self.store.clone();
        blocking(move || f(&store)).await
    }
}

#[async_trait]
impl Backend for StoreBackend {
    async fn list_buckets(&self, owner: &str) -> Result<Vec<BucketInfo>, BackendError> {
        let owner = owner.to_string();
        self.on_store(move |store| {
            Ok(store
                .list_buckets()?
                .into_iter()
                .filter(|(_, b)| b.owner == owner)
                .map(|(name, b)| BucketInfo {
                    name,
                    owner: b.owner,
                    created: time(b.created_ms),
                })
                .collect())
        })
        .await
    }

    async fn create_bucket(&self, owner: &str, name: &str) -> Result<(), BackendError> {
        if super::RESERVED_BUCKETS.contains(&name) {
            return Err(BackendError::BucketAlreadyExists);
        }
        let (owner, name) = (owner.to_string(), name.to_string());
        self.on_store(move |store| store.create_bucket(&name, &owner))
            .await
    }

    async fn head_bucket(&self, name: &str) -> Result<BucketInfo, BackendError> {
        let name = name.to_string();
        self.on_store(move |store| {
            let b = store.bucket(&name)?;
            Ok(BucketInfo {
                name,
                owner: b.owner,
                created: time(b.created_ms),
            })
        })
        .await
    }

    async fn delete_bucket(&self, name: &str) -> Result<(), BackendError> {
        let name = name.to_string();
        self.on_store(move |store| store.delete_bucket(&name)).await
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        attrs: ObjectAttrs,
        opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError> {
        let target = Target::Object {
            bucket: bucket.to_string(),
            key: key.to_string(),
            precondition: precondition(&opts),
        };
        let late = opts.late_checksums.clone();
        let final_attrs = {
            let attrs = attrs.clone();
            move || {
                let mut attrs = attrs;
                attrs.checksums.extend(late.take());
                encode_attrs(&attrs)
            }
        };
        let c = ingest(
            self.store.clone(),
            target,
            chunking(&opts)?,
            body,
            opts.content_md5,
            final_attrs,
        )
        .await?;
        let mut attrs = attrs;
        attrs.checksums.extend(opts.late_checksums.take());
        Ok(ObjectInfo {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: c.size,
            etag: c.etag,
            last_modified: time(c.modified_ms),
            attrs,
        })
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectInfo, ByteStream), BackendError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        let reader = self
            .on_store(move |store| store.read(&b, &k, range))
            .await?;
        let info = object_info(bucket, key, reader.record());
        Ok((info, stream_reader(reader)))
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectInfo, BackendError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        let rec = self.on_store(move |store| store.head(&b, &k)).await?;
        Ok(object_info(bucket, key, &rec))
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        self.on_store(move |store| store.delete_object(&b, &k))
            .await
    }

    async fn copy_object(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        attrs: Option<ObjectAttrs>,
        opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError> {
        let (sb, sk, db, dk) = (
            src_bucket.to_string(),
            src_key.to_string(),
            dst_bucket.to_string(),
            dst_key.to_string(),
        );
        let pre = precondition(&opts);
        let raw = attrs.as_ref().map(encode_attrs);
        let rec = self
            .on_store(move |store| store.copy_object((&sb, &sk), (&db, &dk), raw, &pre))
            .await?;
        Ok(object_info(dst_bucket, dst_key, &rec))
    }

    async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ObjectInfo>, bool), BackendError> {
        let (b, p, after) = (
            bucket.to_string(),
            prefix.to_string(),
            start_after.map(str::to_string),
        );
        let (page, more) = self
            .on_store(move |store| store.list_objects(&b, &p, after.as_deref(), limit))
            .await?;
        Ok((
            page.iter()
                .map(|(k, rec)| object_info(bucket, k, rec))
                .collect(),
            more,
        ))
    }

    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        attrs: ObjectAttrs,
        opts: PutOptions,
    ) -> Result<String, BackendError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        let choice = chunking(&opts)?;
        let raw = encode_attrs(&attrs);
        self.on_store(move |store| store.create_upload(&b, &k, raw, choice))
            .await
    }

    async fn upload_part(
        &self,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
    ) -> Result<PartInfo, BackendError> {
        self.upload_part_checked(
            upload_id,
            part_number,
            body,
            content_md5,
            LateChecksums::default(),
        )
        .await
    }

    async fn upload_part_checked(
        &self,
        upload_id: &str,
        part_number: u32,
        body: ByteStream,
        content_md5: Option<[u8; 16]>,
        checksums: LateChecksums,
    ) -> Result<PartInfo, BackendError> {
        let id = upload_id.to_string();
        let upload: UploadRecord = self.on_store(move |store| store.upload(&id)).await?;
        let choice = upload.chunking.parse().unwrap_or_default();
        let target = Target::Part {
            upload_id: upload_id.to_string(),
            part: part_number,
        };
        // The checksums are complete once the body has ended, which is when
        // the writer asks for the attributes; they commit with the part.
        let late = checksums.clone();
        let c = ingest(
            self.store.clone(),
            target,
            choice,
            body,
            content_md5,
            move || encode_part_sums(&late.take()),
        )
        .await?;
        Ok(PartInfo {
            part_number,
            etag: c.etag,
            size: c.size,
            last_modified: time(c.modified_ms),
            checksums: checksums.take(),
        })
    }

    async fn upload_part_copy(
        &self,
        upload_id: &str,
        part_number: u32,
        src_bucket: &str,
        src_key: &str,
        range: Option<Range<u64>>,
    ) -> Result<PartInfo, BackendError> {
        let (id, sb, sk) = (
            upload_id.to_string(),
            src_bucket.to_string(),
            src_key.to_string(),
        );
        let c = self
            .on_store(move |store| {
                let upload = store.upload(&id)?;
                let reader = store.read(&sb, &sk, range)?;
                let mut w = store.writer(
                    Target::Part {
                        upload_id: id,
                        part: part_number,
                    },
                    upload.chunking.parse().unwrap_or_default(),
                )?;
                // Re-chunking the source finds all its chunks already stored:
                // only metadata is written.
                for piece in reader {
                    w.write(piece?)?;
                }
                w.finish(Vec::new(), None)
            })
            .await?;
        Ok(PartInfo {
            part_number,
            etag: c.etag,
            size: c.size,
            last_modified: time(c.modified_ms),
            checksums: BTreeMap::new(),
        })
    }

    async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, BackendError> {
        let id = upload_id.to_string();
        let parts = self
            .on_store(move |store| store.list_parts_with_attrs(&id))
            .await?;
        Ok(parts
            .into_iter()
            .map(|(n, p, attrs)| PartInfo {
                part_number: n,
                etag: hex::encode(p.md5),
                size: p.size,
                last_modified: time(p.modified_ms),
                checksums: decode_part_sums(&attrs),
            })
            .collect())
    }

    async fn complete_multipart(
        &self,
        upload_id: &str,
        parts: Vec<(u32, String)>,
        opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError> {
        let id = upload_id.to_string();
        let pre = precondition(&opts);
        let sums = opts.late_checksums.take();
        let checksum_type = opts.checksum_type.clone();
        let (upload, rec) = self
            .on_store(move |store| {
                let upload = store.upload(&id)?;
                let mut attrs = decode_attrs(&upload.attrs);
                attrs.checksums.extend(sums);
                attrs.checksum_type = checksum_type;
                let attrs = encode_attrs(&attrs);
                let rec = store.complete_upload_with(&id, &parts, &pre, Some(attrs))?;
                Ok((upload, rec))
            })
            .await?;
        Ok(object_info(&upload.bucket, &upload.key, &rec))
    }

    async fn abort_multipart(&self, upload_id: &str) -> Result<(), BackendError> {
        let id = upload_id.to_string();
        self.on_store(move |store| store.abort_upload(&id)).await
    }

    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>, BackendError> {
        let (b, p) = (bucket.to_string(), prefix.to_string());
        let uploads = self
            .on_store(move |store| {
                store.bucket(&b)?;
                store.list_uploads(&b, &p)
            })
            .await?;
        Ok(uploads
            .into_iter()
            .map(|(id, u)| {
                let attrs = decode_attrs(&u.attrs);
                UploadInfo {
                    upload_id: id,
                    bucket: u.bucket,
                    key: u.key,
                    initiated: time(u.initiated_ms),
                    checksum_algorithm: attrs.checksum_algorithm,
                    checksum_type: attrs.checksum_type,
                }
            })
            .collect())
    }

    async fn object_parts(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, Option<Vec<ObjectPartInfo>>), BackendError> {
        let (b, k) = (bucket.to_string(), key.to_string());
        let (rec, layout) = self
            .on_store(move |store| store.object_parts(&b, &k))
            .await?;
        let parts = layout.map(|l| {
            l.parts
                .into_iter()
                .map(|p| ObjectPartInfo {
                    size: p.size,
                    checksums: decode_part_sums(&p.attrs),
                })
                .collect()
        });
        Ok((object_info(bucket, key, &rec), parts))
    }
}
