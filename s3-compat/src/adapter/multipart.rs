//! Multipart uploads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use s3s::dto;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};
use sha2::Digest as _;

use super::object::{
    attrs_from_headers, check_copy_conditions, checksum_spec, copy_source, parse_md5, put_options,
    set_checksums, upload_body,
};
use super::{check_key, ctx_of, etag, hdr, s3err, ts, Adapter, ReqCtx};
use crate::backend::{BackendError, ByteStream, LateChecksums, ObjectInfo, PartInfo, UploadInfo};
use crate::checksum::{self, Algorithm, Computing};
use crate::cond;

/// S3's largest part.
const MAX_PART_SIZE: u64 = 5 << 30;

fn part_number(n: i32) -> S3Result<u32> {
    match u32::try_from(n) {
        Ok(n @ 1..=10000) => Ok(n),
        _ => Err(s3err(
            S3ErrorCode::InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive",
        )),
    }
}

/// How long, and how many, completed uploads are remembered so that a
/// retried CompleteMultipartUpload (a client that timed out waiting for the
/// first answer) gets the same answer instead of NoSuchUpload. Kept in
/// memory per process: a restart, or a retry reaching another frontend,
/// answers NoSuchUpload as before.
const COMPLETED_TTL: Duration = Duration::from_secs(60 * 60);
const COMPLETED_MAX: usize = 10_000;
/// How long a completion that lost a race with a concurrent identical one
/// waits for that one's answer: 50 × 20 ms.
const REPLAY_WAIT_STEPS: usize = 50;
const REPLAY_WAIT_STEP: Duration = Duration::from_millis(20);

/// The answer a completion gave, for replaying it.
#[derive(Debug, Clone)]
struct Done {
    bucket: String,
    key: String,
    /// SHA-256 of the part list (numbers and ETags) the completion named;
    /// a retry naming other parts is not a retry.
    parts_hash: [u8; 32],
    etag: String,
    checksums: BTreeMap<String, String>,
    checksum_type: Option<String>,
}

/// The remembered completions by upload id, and their ids oldest first.
type CompletedState = (
    HashMap<String, (Instant, Done)>,
    VecDeque<(Instant, String)>,
);

/// Recently completed uploads by upload id, bounded in count and age.
#[derive(Default)]
pub(crate) struct Completed {
    inner: Mutex<CompletedState>,
    /// Upload ids whose completion is being committed right now, with how
    /// many requests are committing each: between the commit removing the
    /// upload and its answer being remembered, a retry must wait, not
    /// answer NoSuchUpload.
    committing: Mutex<HashMap<String, usize>>,
}

/// Marks an upload as being committed for as long as it lives.
struct Committing<'a> {
    completed: &'a Completed,
    upload_id: String,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        let mut g = self
            .completed
            .committing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = g.get_mut(&self.upload_id) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.upload_id);
            }
        }
    }
}

impl Completed {
    fn committing(&self, upload_id: &str) -> Committing<'_> {
        *self
            .committing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(upload_id.to_owned())
            .or_default() += 1;
        Committing {
            completed: self,
            upload_id: upload_id.to_owned(),
        }
    }

    fn is_committing(&self, upload_id: &str) -> bool {
        self.committing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(upload_id)
    }

    /// The remembered answer for this completion; while another request is
    /// committing the same upload, waits (bounded) for its answer.
    async fn replay_after_commit(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
        hash: &[u8; 32],
    ) -> Option<Done> {
        for _ in 0..REPLAY_WAIT_STEPS {
            if let Some(d) = self.replay(upload_id, bucket, key, hash) {
                return Some(d);
            }
            if !self.is_committing(upload_id) {
                break;
            }
            tokio::time::sleep(REPLAY_WAIT_STEP).await;
        }
        self.replay(upload_id, bucket, key, hash)
    }

    fn insert(&self, upload_id: &str, done: Done) {
        let now = Instant::now();
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *g;
        map.insert(upload_id.to_owned(), (now, done));
        order.push_back((now, upload_id.to_owned()));
        // Oldest first: expire by age, then by count. An id completed again
        // (cannot happen: ids are single-use) would only expire early.
        while let Some((t, id)) = order.front() {
            if map.len() <= COMPLETED_MAX && now.duration_since(*t) < COMPLETED_TTL {
                break;
            }
            if map.get(id).is_some_and(|(at, _)| at == t) {
                map.remove(id);
            }
            order.pop_front();
        }
    }

    fn replay(&self, upload_id: &str, bucket: &str, key: &str, hash: &[u8; 32]) -> Option<Done> {
        let g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, d) = g.0.get(upload_id)?;
        (at.elapsed() < COMPLETED_TTL
            && d.bucket == bucket
            && d.key == key
            && d.parts_hash == *hash)
            .then(|| d.clone())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .len()
    }
}

fn invalid_request(msg: impl Into<String>) -> s3s::S3Error {
    s3err(S3ErrorCode::InvalidRequest, msg)
}

/// The checksum algorithm and type of an upload, from CreateMultipartUpload
/// (`x-amz-checksum-algorithm`, `x-amz-checksum-type`), checked the way AWS
/// checks them. Without a type, CRC64NVME is FULL_OBJECT and the others
/// COMPOSITE.
fn upload_checksum(
    algorithm: Option<&str>,
    kind: Option<&str>,
) -> S3Result<Option<(Algorithm, &'static str)>> {
    let Some(name) = algorithm else {
        if kind.is_some() {
            return Err(invalid_request(
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.",
            ));
        }
        return Ok(None);
    };
    let a = Algorithm::from_name(name.trim()).ok_or_else(|| {
        invalid_request(
            "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]",
        )
    })?;
    let t = match kind.map(str::trim) {
        None if a.supports_composite() => dto::ChecksumType::COMPOSITE,
        None => dto::ChecksumType::FULL_OBJECT,
        Some(t) if t.eq_ignore_ascii_case("COMPOSITE") => dto::ChecksumType::COMPOSITE,
        Some(t) if t.eq_ignore_ascii_case("FULL_OBJECT") => dto::ChecksumType::FULL_OBJECT,
        Some(_) => {
            return Err(invalid_request(
                "Value for x-amz-checksum-type header is invalid.",
            ))
        }
    };
    let ok = if t == dto::ChecksumType::COMPOSITE {
        a.supports_composite()
    } else {
        a.supports_full_object()
    };
    if !ok {
        return Err(invalid_request(format!(
            "The {t} checksum type cannot be used with the {} checksum algorithm.",
            a.name().to_ascii_lowercase()
        )));
    }
    Ok(Some((a, t)))
}

fn upload_algorithm(u: &UploadInfo) -> Option<Algorithm> {
    u.checksum_algorithm
        .as_deref()
        .and_then(Algorithm::from_name)
}

fn checksum_type_dto(t: &Option<String>) -> Option<dto::ChecksumType> {
    t.clone().map(dto::ChecksumType::from)
}

fn checksum_algorithm_dto(a: Option<Algorithm>) -> Option<dto::ChecksumAlgorithm> {
    a.map(|a| dto::ChecksumAlgorithm::from(a.name().to_owned()))
}

/// The part body as the backend stores it: verified against the request's
/// checksums and, if the upload names an algorithm the request carried no
/// value for, checksummed with it here, so every part has its checksum.
fn part_body(
    body: ByteStream,
    upload_alg: Option<Algorithm>,
    sent: &[(Algorithm, Option<String>)],
    late: &LateChecksums,
) -> S3Result<ByteStream> {
    let Some(a) = upload_alg else {
        return Ok(body);
    };
    if sent.iter().any(|(x, _)| *x == a) {
        return Ok(body);
    }
    if let Some((other, _)) = sent.first() {
        return Err(invalid_request(format!(
            "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
            a.name().to_ascii_lowercase(),
            other.name().to_ascii_lowercase()
        )));
    }
    Ok(Box::pin(Computing::new(body, a, late.clone())))
}

/// The upload, checked to belong to `bucket/key` (upload ids are not
/// capabilities: the bucket's access check covers only the URL's bucket).
async fn find_upload(
    a: &Adapter,
    ctx: &ReqCtx,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> S3Result<UploadInfo> {
    let uploads = a
        .backend
        .list_multipart_uploads(bucket, key)
        .await
        .map_err(|e| a.map_err(ctx, e))?;
    uploads
        .into_iter()
        .find(|u| u.upload_id == upload_id && u.key == key && u.bucket == bucket)
        .ok_or_else(|| {
            s3err(
                S3ErrorCode::NoSuchUpload,
                "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
            )
        })
}

pub(super) async fn create(
    a: &Adapter,
    req: S3Request<dto::CreateMultipartUploadInput>,
) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
    let ctx = ctx_of(&req.extensions);
    let (bucket, key) = (&req.input.bucket, &req.input.key);
    check_key(key)?;
    let mut attrs = attrs_from_headers(&req.headers, req.input.metadata.as_ref());
    let sum = upload_checksum(
        req.input
            .checksum_algorithm
            .as_ref()
            .map(dto::ChecksumAlgorithm::as_str),
        req.input
            .checksum_type
            .as_ref()
            .map(dto::ChecksumType::as_str),
    )?;
    if let Some((alg, kind)) = sum {
        attrs.checksum_algorithm = Some(alg.name().to_owned());
        attrs.checksum_type = Some(kind.to_owned());
    }
    let mut opts = put_options(&req.headers)?;
    opts.content_md5 = None;
    let upload_id = a
        .backend
        .create_multipart(bucket, key, attrs, opts)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::CreateMultipartUploadOutput {
        bucket: Some(bucket.clone()),
        key: Some(key.clone()),
        upload_id: Some(upload_id),
        checksum_algorithm: checksum_algorithm_dto(sum.map(|(a, _)| a)),
        checksum_type: sum.map(|(_, t)| dto::ChecksumType::from_static(t)),
        ..Default::default()
    }))
}

pub(super) async fn upload_part(
    a: &Adapter,
    mut req: S3Request<dto::UploadPartInput>,
) -> S3Result<S3Response<dto::UploadPartOutput>> {
    let ctx = ctx_of(&req.extensions);
    let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
    check_key(&key)?;
    let n = part_number(req.input.part_number)?;
    let upload = find_upload(a, &ctx, &bucket, &key, &req.input.upload_id).await?;
    let content_md5 = match hdr(&req.headers, "content-md5") {
        Some(v) => Some(parse_md5(v)?),
        None => None,
    };
    let checksums = checksum_spec(&req.headers)?;
    let late = LateChecksums::default();
    let upload_alg = upload_algorithm(&upload);
    let sent = checksums.clone();
    let body = upload_body(
        req.input.body.take(),
        req.trailing_headers.take(),
        req.input.content_length,
        checksums,
        a.config.max_object_size.min(MAX_PART_SIZE),
        late.clone(),
        &ctx,
    );
    let body = part_body(body, upload_alg, &sent, &late)?;
    let part = a
        .backend
        .upload_part_checked(&req.input.upload_id, n, body, content_md5, late.clone())
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    if let Some(b) = ctx.body_error() {
        tracing::error!(error = %b, "backend stored a part whose body failed");
        return Err(crate::error::body_error(&b));
    }
    let mut out = dto::UploadPartOutput {
        e_tag: Some(etag(&part.etag)),
        ..Default::default()
    };
    set_checksums!(out, &late.take());
    Ok(S3Response::new(out))
}

/// `x-amz-copy-source-range: bytes=a-b` (both bounds required).
fn copy_range(v: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let bad = || {
        s3err(
            S3ErrorCode::InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy",
        )
    };
    let (a, b) = v
        .trim()
        .strip_prefix("bytes=")
        .and_then(|s| s.split_once('-'))
        .ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    if a > b {
        return Err(bad());
    }
    if b >= size {
        return Err(s3err(
            S3ErrorCode::InvalidRange,
            "The requested range is not satisfiable",
        ));
    }
    Ok(a..b + 1)
}

pub(super) async fn upload_part_copy(
    a: &Adapter,
    req: S3Request<dto::UploadPartCopyInput>,
) -> S3Result<S3Response<dto::UploadPartCopyOutput>> {
    let ctx = ctx_of(&req.extensions);
    let user = a.user(&req)?;
    let i = &req.input;
    check_key(&i.key)?;
    let n = part_number(i.part_number)?;
    let upload = find_upload(a, &ctx, &i.bucket, &i.key, &i.upload_id).await?;
    let (src_bucket, src_key) = copy_source(&i.copy_source)?;
    a.check_read(Some(&user), &src_bucket).await?;
    let src = a
        .backend
        .head_object(&src_bucket, &src_key)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    check_copy_conditions(&req.headers, &src)?;
    let range = match hdr(&req.headers, "x-amz-copy-source-range") {
        Some(v) => Some(copy_range(v, src.size)?),
        None => None,
    };
    let part: PartInfo = match upload_algorithm(&upload) {
        None => a
            .backend
            .upload_part_copy(&i.upload_id, n, &src_bucket, &src_key, range)
            .await
            .map_err(|e| a.map_err(&ctx, e))?,
        // The part needs its checksum: stream the source through the
        // checksum on its way in (the store still finds every chunk already
        // stored, so only metadata is written, as with a plain copy).
        Some(alg) => {
            let (found, body) = a
                .backend
                .get_object(&src_bucket, &src_key, range)
                .await
                .map_err(|e| a.map_err(&ctx, e))?;
            if found.etag != src.etag {
                // Replaced since the conditions were checked against it.
                check_copy_conditions(&req.headers, &found)?;
            }
            let late = LateChecksums::default();
            let body: ByteStream = Box::pin(Computing::new(body, alg, late.clone()));
            a.backend
                .upload_part_checked(&i.upload_id, n, body, None, late)
                .await
                .map_err(|e| a.map_err(&ctx, e))?
        }
    };
    let mut result = dto::CopyPartResult {
        e_tag: Some(etag(&part.etag)),
        last_modified: Some(ts(part.last_modified)),
        ..Default::default()
    };
    set_checksums!(result, &part.checksums);
    Ok(S3Response::new(dto::UploadPartCopyOutput {
        copy_part_result: Some(result),
        ..Default::default()
    }))
}

fn malformed_xml() -> s3s::S3Error {
    s3err(
        S3ErrorCode::MalformedXML,
        "The XML you provided was not well-formed or did not validate against our published schema",
    )
}

/// A part as CompleteMultipartUpload names it.
struct Named {
    number: u32,
    etag: String,
    /// Per-part checksums given in the request XML.
    checksums: BTreeMap<String, String>,
}

fn named_parts(i: &dto::CompleteMultipartUploadInput) -> S3Result<Vec<Named>> {
    let parts = i
        .multipart_upload
        .as_ref()
        .and_then(|m| m.parts.as_ref())
        .filter(|p| !p.is_empty())
        .ok_or_else(malformed_xml)?;
    let mut list = Vec::with_capacity(parts.len());
    for p in parts {
        let n = p.part_number.ok_or_else(malformed_xml)?;
        let n = part_number(n).map_err(|_| invalid_part())?;
        let e = p.e_tag.as_ref().ok_or_else(malformed_xml)?;
        let mut checksums = BTreeMap::new();
        for (alg, v) in [
            (Algorithm::Crc32, &p.checksum_crc32),
            (Algorithm::Crc32c, &p.checksum_crc32c),
            (Algorithm::Crc64Nvme, &p.checksum_crc64nvme),
            (Algorithm::Sha1, &p.checksum_sha1),
            (Algorithm::Sha256, &p.checksum_sha256),
        ] {
            if let Some(v) = v {
                checksums.insert(alg.name().to_owned(), v.trim().to_owned());
            }
        }
        list.push(Named {
            number: n,
            etag: cond::bare_etag(e.value()).to_ascii_lowercase(),
            checksums,
        });
    }
    Ok(list)
}

fn parts_hash(list: &[Named]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for p in list {
        h.update(format!("{} {}\n", p.number, p.etag).as_bytes());
    }
    h.finalize().into()
}

fn invalid_part() -> s3s::S3Error {
    s3err(
        S3ErrorCode::InvalidPart,
        "One or more of the specified parts could not be found.  The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
    )
}

fn complete_output(d: &Done) -> dto::CompleteMultipartUploadOutput {
    let mut out = dto::CompleteMultipartUploadOutput {
        bucket: Some(d.bucket.clone()),
        key: Some(d.key.clone()),
        e_tag: Some(etag(&d.etag)),
        location: Some(format!("/{}/{}", d.bucket, d.key)),
        checksum_type: checksum_type_dto(&d.checksum_type),
        ..Default::default()
    };
    set_checksums!(out, &d.checksums);
    out
}

/// The object checksum of a completion, from the stored part checksums.
/// Checks the per-part values the request names against the stored ones
/// (InvalidPart if they differ, as for a wrong ETag).
fn object_checksum(
    upload: &UploadInfo,
    named: &[Named],
    stored: &HashMap<u32, PartInfo>,
) -> S3Result<Option<(Algorithm, String)>> {
    let alg = upload_algorithm(upload);
    let composite = upload.checksum_type.as_deref() != Some(dto::ChecksumType::FULL_OBJECT);
    for p in named {
        let Some(s) = stored.get(&p.number) else {
            return Err(invalid_part());
        };
        if s.etag != p.etag {
            return Err(invalid_part());
        }
        for (name, v) in &p.checksums {
            if s.checksums.get(name) != Some(v) {
                return Err(invalid_part());
            }
        }
        if let Some(a) = alg {
            // A composite checksum is over the part checksums the client
            // knows, so AWS wants each named; a full-object one needs none.
            if composite && !p.checksums.contains_key(a.name()) {
                return Err(invalid_request(format!(
                    "The upload was created using a {} checksum. The complete request must include the checksum for each part. It was missing for part {} in the request.",
                    a.name().to_ascii_lowercase(),
                    p.number
                )));
            }
        }
    }
    let Some(a) = alg else {
        return Ok(None);
    };
    let mut values = Vec::with_capacity(named.len());
    for p in named {
        let s = &stored[&p.number];
        match s.checksums.get(a.name()) {
            Some(v) => values.push((v.as_str(), s.size)),
            None => {
                // Only a backend that keeps no part checksums gets here.
                tracing::warn!(part = p.number, "part has no stored checksum");
                return Ok(None);
            }
        }
    }
    let value = if composite {
        let v: Vec<&str> = values.iter().map(|(v, _)| *v).collect();
        checksum::composite(a, &v)
    } else {
        checksum::combine_crcs(a, &values)
    };
    Ok(value.map(|v| (a, v)))
}

pub(super) async fn complete(
    a: &Adapter,
    req: S3Request<dto::CompleteMultipartUploadInput>,
) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    check_key(&i.key)?;
    let upload = match find_upload(a, &ctx, &i.bucket, &i.key, &i.upload_id).await {
        Ok(u) => u,
        Err(e) => {
            // A retry of a completion that already happened (or is being
            // committed right now) gets its answer.
            let replay = match named_parts(i) {
                Ok(named) => {
                    a.completed
                        .replay_after_commit(&i.upload_id, &i.bucket, &i.key, &parts_hash(&named))
                        .await
                }
                Err(_) => None,
            };
            return match replay {
                Some(d) => Ok(S3Response::new(complete_output(&d))),
                None => Err(e),
            };
        }
    };
    let named = named_parts(i)?;
    let hash = parts_hash(&named);
    if let Some(t) = &i.checksum_type {
        if upload.checksum_type.as_deref() != Some(t.as_str()) {
            return Err(invalid_request(format!(
                "The upload was created using the {} checksum mode. The complete request must use the same checksum mode.",
                upload.checksum_type.as_deref().unwrap_or("null")
            )));
        }
    }
    let stored = match a.backend.list_parts(&i.upload_id).await {
        Ok(parts) => parts,
        Err(e) => {
            // Completed by a concurrent identical request since it was found.
            if e == BackendError::NoSuchUpload {
                if let Some(d) = a
                    .completed
                    .replay_after_commit(&i.upload_id, &i.bucket, &i.key, &hash)
                    .await
                {
                    return Ok(S3Response::new(complete_output(&d)));
                }
            }
            return Err(a.map_err(&ctx, e));
        }
    };
    let stored: HashMap<u32, PartInfo> = stored.into_iter().map(|p| (p.part_number, p)).collect();
    if named.windows(2).any(|w| w[0].number >= w[1].number) {
        return Err(s3err(
            S3ErrorCode::InvalidPartOrder,
            "The list of parts was not in ascending order. Parts must be ordered by part number.",
        ));
    }
    let sum = object_checksum(&upload, &named, &stored)?;
    // A whole-object checksum sent with the request must be what the parts
    // make (the `-N` suffix of a composite value is optional).
    for (alg, v) in [
        (Algorithm::Crc32, &i.checksum_crc32),
        (Algorithm::Crc32c, &i.checksum_crc32c),
        (Algorithm::Crc64Nvme, &i.checksum_crc64nvme),
        (Algorithm::Sha1, &i.checksum_sha1),
        (Algorithm::Sha256, &i.checksum_sha256),
    ] {
        let Some(v) = v else { continue };
        let base = |s: &str| s.trim().split('-').next().unwrap_or_default().to_owned();
        let ok = sum
            .as_ref()
            .is_some_and(|(a, want)| *a == alg && base(want) == base(v));
        if !ok {
            return Err(s3err(
                S3ErrorCode::BadDigest,
                format!(
                    "The {} you specified did not match the calculated checksum.",
                    alg.name().to_ascii_lowercase()
                ),
            ));
        }
    }
    if let Some(want) = i.mpu_object_size {
        let size: u64 = named
            .iter()
            .filter_map(|p| stored.get(&p.number))
            .map(|p| p.size)
            .sum();
        if u64::try_from(want).ok() != Some(size) {
            return Err(invalid_request(format!(
                "The provided 'x-amz-mp-object-size' header value {want} does not match what was computed: {size}"
            )));
        }
    }
    let list: Vec<(u32, String)> = named.iter().map(|p| (p.number, p.etag.clone())).collect();
    let mut opts = put_options(&req.headers)?;
    opts.content_md5 = None; // an MD5 of the XML request, not of the object
    if let Some((alg, v)) = &sum {
        opts.late_checksums.insert(alg.name(), v.clone());
        opts.checksum_type = upload.checksum_type.clone();
    }
    let committing = a.completed.committing(&i.upload_id);
    let info: ObjectInfo = match a.backend.complete_multipart(&i.upload_id, list, opts).await {
        Ok(info) => info,
        Err(e) => {
            drop(committing);
            // Completed by a concurrent retry of this request meanwhile: its
            // answer is remembered as soon as its commit returns, so wait
            // for it a little (bounded) before calling the upload gone.
            if e == BackendError::NoSuchUpload {
                if let Some(d) = a
                    .completed
                    .replay_after_commit(&i.upload_id, &i.bucket, &i.key, &hash)
                    .await
                {
                    return Ok(S3Response::new(complete_output(&d)));
                }
            }
            return Err(a.map_err(&ctx, e));
        }
    };
    let done = Done {
        bucket: info.bucket.clone(),
        key: info.key.clone(),
        parts_hash: hash,
        etag: info.etag.clone(),
        checksums: sum
            .map(|(a, v)| BTreeMap::from([(a.name().to_owned(), v)]))
            .unwrap_or_default(),
        checksum_type: sum_type(&upload, &info),
    };
    a.completed.insert(&i.upload_id, done.clone());
    drop(committing);
    Ok(S3Response::new(complete_output(&done)))
}

/// The checksum type to report: the upload's, if the object got a checksum.
fn sum_type(upload: &UploadInfo, info: &ObjectInfo) -> Option<String> {
    if info.attrs.checksums.is_empty() {
        None
    } else {
        upload.checksum_type.clone()
    }
}

pub(super) async fn abort(
    a: &Adapter,
    req: S3Request<dto::AbortMultipartUploadInput>,
) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    check_key(&i.key)?;
    find_upload(a, &ctx, &i.bucket, &i.key, &i.upload_id).await?;
    a.backend
        .abort_multipart(&i.upload_id)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::AbortMultipartUploadOutput::default()))
}

pub(super) async fn list_parts(
    a: &Adapter,
    req: S3Request<dto::ListPartsInput>,
) -> S3Result<S3Response<dto::ListPartsOutput>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    check_key(&i.key)?;
    let upload = find_upload(a, &ctx, &i.bucket, &i.key, &i.upload_id).await?;
    let mut parts = a
        .backend
        .list_parts(&i.upload_id)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    parts.sort_by_key(|p| p.part_number);
    let marker = i.part_number_marker.unwrap_or(0).max(0);
    let max = match i.max_parts {
        Some(n) if n < 0 => {
            return Err(s3err(
                S3ErrorCode::InvalidArgument,
                "max-parts must be non-negative",
            ))
        }
        Some(n) => usize::try_from(n).unwrap_or(1000).min(1000),
        None => 1000,
    };
    let after: Vec<_> = parts
        .into_iter()
        .filter(|p| i64::from(p.part_number) > i64::from(marker))
        .collect();
    let is_truncated = after.len() > max;
    let page: Vec<_> = after.into_iter().take(max).collect();
    let next = page.last().map(|p| p.part_number);
    let owner = ctx.user().map(|u| dto::Owner {
        id: Some(u.id),
        display_name: Some(u.display_name),
    });
    Ok(S3Response::new(dto::ListPartsOutput {
        bucket: Some(i.bucket.clone()),
        key: Some(i.key.clone()),
        upload_id: Some(i.upload_id.clone()),
        part_number_marker: Some(marker),
        next_part_number_marker: next.and_then(|n| i32::try_from(n).ok()),
        max_parts: i32::try_from(max).ok(),
        is_truncated: Some(is_truncated),
        owner: owner.clone(),
        initiator: owner.map(|o| dto::Initiator {
            id: o.id,
            display_name: o.display_name,
        }),
        storage_class: Some(dto::StorageClass::from_static(dto::StorageClass::STANDARD)),
        checksum_algorithm: checksum_algorithm_dto(upload_algorithm(&upload)),
        checksum_type: checksum_type_dto(&upload.checksum_type),
        parts: Some(
            page.into_iter()
                .map(|p| {
                    let mut part = dto::Part {
                        part_number: i32::try_from(p.part_number).ok(),
                        e_tag: Some(etag(&p.etag)),
                        size: i64::try_from(p.size).ok(),
                        last_modified: Some(ts(p.last_modified)),
                        ..Default::default()
                    };
                    set_checksums!(part, &p.checksums);
                    part
                })
                .collect(),
        ),
        ..Default::default()
    }))
}

pub(super) async fn list_uploads(
    a: &Adapter,
    req: S3Request<dto::ListMultipartUploadsInput>,
) -> S3Result<S3Response<dto::ListMultipartUploadsOutput>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    let prefix = i.prefix.clone().unwrap_or_default();
    let mut uploads = a
        .backend
        .list_multipart_uploads(&i.bucket, &prefix)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    uploads.sort_by(|x, y| {
        (x.key.as_str(), x.initiated, x.upload_id.as_str()).cmp(&(
            y.key.as_str(),
            y.initiated,
            y.upload_id.as_str(),
        ))
    });
    let key_marker = i.key_marker.clone().filter(|s| !s.is_empty());
    let id_marker = i.upload_id_marker.clone().filter(|s| !s.is_empty());
    if let Some(km) = &key_marker {
        // After the key marker, or within it after the upload-id marker.
        let pos = id_marker.as_ref().and_then(|id| {
            uploads
                .iter()
                .position(|u| &u.key == km && &u.upload_id == id)
        });
        uploads = match pos {
            Some(p) => uploads.split_off(p + 1),
            None => uploads.into_iter().filter(|u| u.key > *km).collect(),
        };
    }
    let max = match i.max_uploads {
        Some(n) if n < 0 => {
            return Err(s3err(
                S3ErrorCode::InvalidArgument,
                "max-uploads must be non-negative",
            ))
        }
        Some(n) => usize::try_from(n).unwrap_or(1000).min(1000),
        None => 1000,
    };
    let is_truncated = uploads.len() > max;
    uploads.truncate(max);
    let last = uploads.last().cloned();
    let owner = ctx.user().map(|u| dto::Owner {
        id: Some(u.id),
        display_name: Some(u.display_name),
    });
    Ok(S3Response::new(dto::ListMultipartUploadsOutput {
        bucket: Some(i.bucket.clone()),
        prefix: i.prefix.clone(),
        key_marker: i.key_marker.clone(),
        upload_id_marker: i.upload_id_marker.clone(),
        next_key_marker: is_truncated
            .then(|| last.as_ref().map(|u| u.key.clone()))
            .flatten(),
        next_upload_id_marker: is_truncated
            .then(|| last.as_ref().map(|u| u.upload_id.clone()))
            .flatten(),
        max_uploads: i32::try_from(max).ok(),
        is_truncated: Some(is_truncated),
        uploads: Some(
            uploads
                .into_iter()
                .map(|u| dto::MultipartUpload {
                    checksum_algorithm: checksum_algorithm_dto(upload_algorithm(&u)),
                    checksum_type: checksum_type_dto(&u.checksum_type),
                    key: Some(u.key),
                    upload_id: Some(u.upload_id),
                    initiated: Some(ts(u.initiated)),
                    owner: owner.clone(),
                    initiator: owner.clone().map(|o| dto::Initiator {
                        id: o.id,
                        display_name: o.display_name,
                    }),
                    storage_class: Some(dto::StorageClass::from_static(
                        dto::StorageClass::STANDARD,
                    )),
                })
                .collect(),
        ),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(n: u8) -> Done {
        Done {
            bucket: "b".into(),
            key: "k".into(),
            parts_hash: [n; 32],
            etag: format!("e{n}"),
            checksums: BTreeMap::new(),
            checksum_type: None,
        }
    }

    #[test]
    fn completed_uploads_are_bounded_and_matched_exactly() {
        let c = Completed::default();
        for i in 0..COMPLETED_MAX + 10 {
            c.insert(&format!("u{i}"), done(1));
        }
        assert_eq!(c.len(), COMPLETED_MAX);
        assert!(
            c.replay("u0", "b", "k", &[1; 32]).is_none(),
            "oldest evicted"
        );
        let last = format!("u{}", COMPLETED_MAX + 9);
        assert_eq!(c.replay(&last, "b", "k", &[1; 32]).unwrap().etag, "e1");
        assert!(c.replay(&last, "b", "k", &[2; 32]).is_none(), "other parts");
        assert!(
            c.replay(&last, "b", "other", &[1; 32]).is_none(),
            "other key"
        );
    }

    #[test]
    fn upload_checksum_rules() {
        assert_eq!(upload_checksum(None, None).unwrap(), None);
        assert!(upload_checksum(None, Some("COMPOSITE")).is_err());
        assert!(upload_checksum(Some("MD5"), None).is_err());
        assert_eq!(
            upload_checksum(Some("crc32"), None).unwrap(),
            Some((Algorithm::Crc32, "COMPOSITE"))
        );
        assert_eq!(
            upload_checksum(Some("CRC64NVME"), None).unwrap(),
            Some((Algorithm::Crc64Nvme, "FULL_OBJECT"))
        );
        assert!(upload_checksum(Some("SHA256"), Some("FULL_OBJECT")).is_err());
        assert!(upload_checksum(Some("CRC64NVME"), Some("COMPOSITE")).is_err());
        assert!(upload_checksum(Some("CRC32C"), Some("BOTH")).is_err());
        assert_eq!(
            upload_checksum(Some("CRC32C"), Some("FULL_OBJECT")).unwrap(),
            Some((Algorithm::Crc32c, "FULL_OBJECT"))
        );
    }
}
