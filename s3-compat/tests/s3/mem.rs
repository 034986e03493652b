//! An in-memory `Backend`: the test fixture that stands in for the store.
//! It follows the trait's contract closely (MD5 ETags, atomic conditional
//! writes, nothing stored on a failed body, multipart rules) so the tests
//! exercise the protocol layer, not this fixture's shortcuts.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use s3_compat::{
    Backend, BackendError, BucketInfo, ByteStream, LateChecksums, ObjectAttrs, ObjectInfo,
    ObjectPartInfo, PartInfo, PutOptions, UploadInfo,
};

struct Obj {
    data: Bytes,
    info: ObjectInfo,
    /// Part boundaries of a multipart object.
    parts: Option<Vec<ObjectPartInfo>>,
}

struct Bucket {
    owner: String,
    created: SystemTime,
    objects: BTreeMap<String, Obj>,
}

struct Upload {
    bucket: String,
    key: String,
    attrs: ObjectAttrs,
    opts: PutOptions,
    initiated: SystemTime,
    parts: BTreeMap<u32, (Bytes, PartInfo)>,
}

#[derive(Default)]
struct State {
    buckets: BTreeMap<String, Bucket>,
    uploads: HashMap<String, Upload>,
    next_upload: u64,
}

pub struct MemBackend {
    state: Mutex<State>,
    min_part_size: u64,
    /// PUTs whose checksums arrived as aws-chunked trailers.
    pub trailer_checksums: std::sync::atomic::AtomicUsize,
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemBackend {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            min_part_size: 5 << 20,
            trailer_checksums: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Direct look into the store, for "nothing was stored" assertions.
    pub fn object_count(&self, bucket: &str) -> usize {
        self.lock()
            .buckets
            .get(bucket)
            .map_or(0, |b| b.objects.len())
    }

    pub fn object_data(&self, bucket: &str, key: &str) -> Option<Bytes> {
        self.lock()
            .buckets
            .get(bucket)
            .and_then(|b| b.objects.get(key))
            .map(|o| o.data.clone())
    }

    pub fn object_attrs(&self, bucket: &str, key: &str) -> Option<ObjectAttrs> {
        self.lock()
            .buckets
            .get(bucket)
            .and_then(|b| b.objects.get(key))
            .map(|o| o.info.attrs.clone())
    }
}

async fn drain(mut body: ByteStream) -> Result<Bytes, BackendError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(buf.freeze())
}

fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn stream_of(data: Bytes) -> ByteStream {
    let chunks: Vec<Result<Bytes, s3_compat::BodyError>> = (0..data.len())
        .step_by(64 << 10)
        .map(|i| Ok(data.slice(i..(i + (64 << 10)).min(data.len()))))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

fn check_conditions(existing: Option<&Obj>, opts: &PutOptions) -> Result<(), BackendError> {
    if let (Some(list), Some(o)) = (&opts.if_none_match, existing) {
        if list.split(',').any(|t| t == "*" || t == o.info.etag) {
            return Err(BackendError::PreconditionFailed);
        }
    }
    if let Some(want) = &opts.if_match {
        match existing {
            None => return Err(BackendError::NoSuchKey),
            Some(o) if want != "*" && o.info.etag != *want => {
                return Err(BackendError::PreconditionFailed)
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for MemBackend {
    async fn list_buckets(&self, owner: &str) -> Result<Vec<BucketInfo>, BackendError> {
        Ok(self
            .lock()
            .buckets
            .iter()
            .filter(|(_, b)| b.owner == owner)
            .map(|(name, b)| BucketInfo {
                name: name.clone(),
                owner: b.owner.clone(),
                created: b.created,
            })
            .collect())
    }

    async fn create_bucket(&self, owner: &str, name: &str) -> Result<(), BackendError> {
        let mut st = self.lock();
        if let Some(b) = st.buckets.get(name) {
            return Err(if b.owner == owner {
                BackendError::BucketAlreadyOwnedByYou
            } else {
                BackendError::BucketAlreadyExists
            });
        }
        st.buckets.insert(
            name.to_owned(),
            Bucket {
                owner: owner.to_owned(),
                created: SystemTime::now(),
                objects: BTreeMap::new(),
            },
        );
        Ok(())
    }

    async fn head_bucket(&self, name: &str) -> Result<BucketInfo, BackendError> {
        let st = self.lock();
        let b = st.buckets.get(name).ok_or(BackendError::NoSuchBucket)?;
        Ok(BucketInfo {
            name: name.to_owned(),
            owner: b.owner.clone(),
            created: b.created,
        })
    }

    async fn delete_bucket(&self, name: &str) -> Result<(), BackendError> {
        let mut st = self.lock();
        let b = st.buckets.get(name).ok_or(BackendError::NoSuchBucket)?;
        if !b.objects.is_empty() {
            return Err(BackendError::BucketNotEmpty);
        }
        st.buckets.remove(name);
        Ok(())
    }

    async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: ByteStream,
        mut attrs: ObjectAttrs,
        opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError> {
        if !self.lock().buckets.contains_key(bucket) {
            return Err(BackendError::NoSuchBucket);
        }
        let data = drain(body).await?;
        let digest = md5(&data);
        if opts.content_md5.is_some_and(|m| m != digest) {
            return Err(BackendError::BadDigest);
        }
        let late = opts.late_checksums.take();
        let fresh = late.keys().any(|k| !attrs.checksums.contains_key(k));
        if fresh {
            self.trailer_checksums
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        attrs.checksums.extend(late);
        let info = ObjectInfo {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            size: data.len() as u64,
            etag: hex::encode(digest),
            last_modified: SystemTime::now(),
            attrs,
        };
        let mut st = self.lock();
        let b = st
            .buckets
            .get_mut(bucket)
            .ok_or(BackendError::NoSuchBucket)?;
        check_conditions(b.objects.get(key), &opts)?;
        b.objects.insert(
            key.to_owned(),
            Obj {
                data,
                info: info.clone(),
                parts: None,
            },
        );
        Ok(info)
    }

    async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<(ObjectInfo, ByteStream), BackendError> {
        let st = self.lock();
        let b = st.buckets.get(bucket).ok_or(BackendError::NoSuchBucket)?;
        let o = b.objects.get(key).ok_or(BackendError::NoSuchKey)?;
        let data = match range {
            Some(r) => {
                let end = r.end.min(o.data.len() as u64) as usize;
                let start = (r.start as usize).min(end);
                o.data.slice(start..end)
            }
            None => o.data.clone(),
        };
        Ok((o.info.clone(), stream_of(data)))
    }

    async fn head_object(&self, bucket: &str, key: &str) -> Result<ObjectInfo, BackendError> {
        let st = self.lock();
        let b = st.buckets.get(bucket).ok_or(BackendError::NoSuchBucket)?;
        b.objects
            .get(key)
            .map(|o| o.info.clone())
            .ok_or(BackendError::NoSuchKey)
    }

    async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), BackendError> {
        let mut st = self.lock();
        let b = st
            .buckets
            .get_mut(bucket)
            .ok_or(BackendError::NoSuchBucket)?;
        b.objects.remove(key);
        Ok(())
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
        let mut st = self.lock();
        let src = st
            .buckets
            .get(src_bucket)
            .ok_or(BackendError::NoSuchBucket)?
            .objects
            .get(src_key)
            .ok_or(BackendError::NoSuchKey)?;
        let data = src.data.clone();
        let parts = src.parts.clone();
        let info = ObjectInfo {
            bucket: dst_bucket.to_owned(),
            key: dst_key.to_owned(),
            size: src.info.size,
            etag: src.info.etag.clone(),
            last_modified: SystemTime::now(),
            attrs: attrs.unwrap_or_else(|| src.info.attrs.clone()),
        };
        let b = st
            .buckets
            .get_mut(dst_bucket)
            .ok_or(BackendError::NoSuchBucket)?;
        check_conditions(b.objects.get(dst_key), &opts)?;
        b.objects.insert(
            dst_key.to_owned(),
            Obj {
                data,
                info: info.clone(),
                parts,
            },
        );
        Ok(info)
    }

    async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<ObjectInfo>, bool), BackendError> {
        let st = self.lock();
        let b = st.buckets.get(bucket).ok_or(BackendError::NoSuchBucket)?;
        let mut it = b
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|s| k.as_str() > s))
            .map(|(_, o)| o.info.clone());
        let page: Vec<_> = it.by_ref().take(limit).collect();
        let more = it.next().is_some();
        Ok((page, more))
    }

    async fn create_multipart(
        &self,
        bucket: &str,
        key: &str,
        attrs: ObjectAttrs,
        opts: PutOptions,
    ) -> Result<String, BackendError> {
        let mut st = self.lock();
        if !st.buckets.contains_key(bucket) {
            return Err(BackendError::NoSuchBucket);
        }
        st.next_upload += 1;
        let id = format!("upload-{}", st.next_upload);
        st.uploads.insert(
            id.clone(),
            Upload {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                attrs,
                opts,
                initiated: SystemTime::now(),
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
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
        if !self.lock().uploads.contains_key(upload_id) {
            return Err(BackendError::NoSuchUpload);
        }
        let data = drain(body).await?;
        let digest = md5(&data);
        if content_md5.is_some_and(|m| m != digest) {
            return Err(BackendError::BadDigest);
        }
        let part = PartInfo {
            part_number,
            etag: hex::encode(digest),
            size: data.len() as u64,
            last_modified: SystemTime::now(),
            checksums: checksums.take(),
        };
        let mut st = self.lock();
        let up = st
            .uploads
            .get_mut(upload_id)
            .ok_or(BackendError::NoSuchUpload)?;
        up.parts.insert(part_number, (data, part.clone()));
        Ok(part)
    }

    async fn upload_part_copy(
        &self,
        upload_id: &str,
        part_number: u32,
        src_bucket: &str,
        src_key: &str,
        range: Option<Range<u64>>,
    ) -> Result<PartInfo, BackendError> {
        let bytes = {
            let st = self.lock();
            let src = st
                .buckets
                .get(src_bucket)
                .and_then(|b| b.objects.get(src_key))
                .ok_or(BackendError::NoSuchKey)?;
            match range {
                Some(r) => {
                    let end = (r.end as usize).min(src.data.len());
                    src.data.slice((r.start as usize).min(end)..end)
                }
                None => src.data.clone(),
            }
        };
        let body: ByteStream = Box::pin(futures::stream::iter([Ok(bytes)]));
        self.upload_part(upload_id, part_number, body, None).await
    }

    async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, BackendError> {
        let st = self.lock();
        let up = st
            .uploads
            .get(upload_id)
            .ok_or(BackendError::NoSuchUpload)?;
        Ok(up.parts.values().map(|(_, p)| p.clone()).collect())
    }

    async fn complete_multipart(
        &self,
        upload_id: &str,
        parts: Vec<(u32, String)>,
        complete_opts: PutOptions,
    ) -> Result<ObjectInfo, BackendError> {
        let mut st = self.lock();
        let up = st
            .uploads
            .get(upload_id)
            .ok_or(BackendError::NoSuchUpload)?;
        if parts.is_empty() {
            return Err(BackendError::InvalidPart);
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(BackendError::InvalidPartOrder);
        }
        let mut data = BytesMut::new();
        let mut md5s = Vec::new();
        let mut layout = Vec::new();
        for (i, (n, etag)) in parts.iter().enumerate() {
            let (bytes, info) = up.parts.get(n).ok_or(BackendError::InvalidPart)?;
            if info.etag != *etag {
                return Err(BackendError::InvalidPart);
            }
            if i + 1 < parts.len() && info.size < self.min_part_size {
                return Err(BackendError::EntityTooSmall);
            }
            md5s.extend_from_slice(&hex::decode(&info.etag).unwrap_or_default());
            layout.push(ObjectPartInfo {
                size: info.size,
                checksums: info.checksums.clone(),
            });
            data.extend_from_slice(bytes);
        }
        let etag = format!("{}-{}", hex::encode(md5(&md5s)), parts.len());
        let data = data.freeze();
        let mut attrs = up.attrs.clone();
        attrs.checksums.extend(complete_opts.late_checksums.take());
        attrs.checksum_type = complete_opts.checksum_type.clone();
        let info = ObjectInfo {
            bucket: up.bucket.clone(),
            key: up.key.clone(),
            size: data.len() as u64,
            etag,
            last_modified: SystemTime::now(),
            attrs,
        };
        let opts = if complete_opts.if_match.is_some() || complete_opts.if_none_match.is_some() {
            complete_opts
        } else {
            up.opts.clone()
        };
        let (bucket, key) = (up.bucket.clone(), up.key.clone());
        let b = st
            .buckets
            .get_mut(&bucket)
            .ok_or(BackendError::NoSuchBucket)?;
        check_conditions(b.objects.get(&key), &opts)?;
        b.objects.insert(
            key,
            Obj {
                data,
                info: info.clone(),
                parts: Some(layout),
            },
        );
        st.uploads.remove(upload_id);
        Ok(info)
    }

    async fn abort_multipart(&self, upload_id: &str) -> Result<(), BackendError> {
        self.lock()
            .uploads
            .remove(upload_id)
            .map(|_| ())
            .ok_or(BackendError::NoSuchUpload)
    }

    async fn list_multipart_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>, BackendError> {
        let st = self.lock();
        if !st.buckets.contains_key(bucket) {
            return Err(BackendError::NoSuchBucket);
        }
        Ok(st
            .uploads
            .iter()
            .filter(|(_, u)| u.bucket == bucket && u.key.starts_with(prefix))
            .map(|(id, u)| UploadInfo {
                upload_id: id.clone(),
                bucket: u.bucket.clone(),
                key: u.key.clone(),
                initiated: u.initiated,
                checksum_algorithm: u.attrs.checksum_algorithm.clone(),
                checksum_type: u.attrs.checksum_type.clone(),
            })
            .collect())
    }

    async fn object_parts(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectInfo, Option<Vec<ObjectPartInfo>>), BackendError> {
        let st = self.lock();
        let b = st.buckets.get(bucket).ok_or(BackendError::NoSuchBucket)?;
        let o = b.objects.get(key).ok_or(BackendError::NoSuchKey)?;
        Ok((o.info.clone(), o.parts.clone()))
    }
}
