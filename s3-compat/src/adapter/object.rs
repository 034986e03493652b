//! Object operations: put, get, head, delete, copy.

use std::collections::BTreeMap;
use std::ops::Range;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use s3s::dto::{self, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::{check_key, ctx_of, etag, hdr, s3err, ts, Adapter};
use crate::backend::{ByteStream, LateChecksums, ObjectAttrs, ObjectInfo, PutOptions};
use crate::body::{verify_body, BodySpec};
use crate::checksum::Algorithm;
use crate::cond::{self, Outcome};
use crate::rfc2047;

/// The user metadata key that selects the store's chunking profile.
const CHUNKING_META: &str = "strato-chunking";

/// Object attributes from request headers (PUT, CreateMultipartUpload,
/// CopyObject with REPLACE). `metadata` is the user metadata as s3s decoded
/// it (RFC 2047 encoded words undone); s3s encodes it again on the way out.
pub(super) fn attrs_from_headers(h: &HeaderMap, metadata: Option<&dto::Metadata>) -> ObjectAttrs {
    let text = |n: &str| hdr(h, n).map(str::to_owned);
    // aws-chunked describes the transfer, not the object: never store it.
    let content_encoding = hdr(h, "content-encoding").and_then(|v| {
        let kept: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
            .collect();
        (!kept.is_empty()).then(|| kept.join(", "))
    });
    let user_metadata = match metadata {
        Some(m) => m
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), rfc2047::decode(v)))
            .collect(),
        None => h
            .iter()
            .filter_map(|(name, value)| {
                let k = name.as_str().strip_prefix("x-amz-meta-")?;
                let v = rfc2047::decode(&String::from_utf8_lossy(value.as_bytes()));
                Some((k.to_owned(), v))
            })
            .collect(),
    };
    ObjectAttrs {
        content_type: text("content-type"),
        content_disposition: text("content-disposition"),
        content_encoding,
        cache_control: text("cache-control"),
        expires: text("expires"),
        user_metadata,
        checksums: Default::default(),
        checksum_type: None,
        checksum_algorithm: None,
    }
}

/// Conditional-write and integrity options from request headers.
pub(super) fn put_options(h: &HeaderMap) -> S3Result<PutOptions> {
    let if_match = hdr(h, "if-match").map(|v| {
        let v = v.trim();
        if v == "*" {
            v.to_owned()
        } else {
            cond::bare_etag(v).to_owned()
        }
    });
    let if_none_match = hdr(h, "if-none-match").map(|v| {
        v.split(',')
            .map(cond::bare_etag)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(",")
    });
    let content_md5 = match hdr(h, "content-md5") {
        None => None,
        Some(v) => Some(parse_md5(v)?),
    };
    Ok(PutOptions {
        if_match,
        if_none_match,
        content_md5,
        chunking: hdr(h, &format!("x-amz-meta-{CHUNKING_META}")).map(str::to_owned),
        late_checksums: LateChecksums::default(),
        checksum_type: None,
    })
}

pub(super) fn parse_md5(v: &str) -> S3Result<[u8; 16]> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| {
            s3err(
                S3ErrorCode::InvalidDigest,
                "The Content-MD5 you specified was invalid.",
            )
        })
}

/// Checksums to verify on an upload: header values, and algorithms whose
/// values come as aws-chunked trailers.
pub(super) fn checksum_spec(h: &HeaderMap) -> S3Result<Vec<(Algorithm, Option<String>)>> {
    let mut out: Vec<(Algorithm, Option<String>)> = Vec::new();
    for a in Algorithm::ALL {
        if let Some(v) = hdr(h, a.header()) {
            let v = v.trim();
            let ok = base64::engine::general_purpose::STANDARD
                .decode(v)
                .is_ok_and(|b| b.len() == a.digest_len());
            if !ok {
                return Err(s3err(
                    S3ErrorCode::InvalidRequest,
                    format!("Value for {} header is invalid.", a.header()),
                ));
            }
            out.push((a, Some(v.to_owned())));
        }
    }
    if let Some(t) = hdr(h, "x-amz-trailer") {
        for name in t.split(',') {
            if let Some(a) = Algorithm::from_header(name) {
                if !out.iter().any(|(x, _)| *x == a) {
                    out.push((a, None));
                }
            }
        }
    }
    if let Some(name) = hdr(h, "x-amz-sdk-checksum-algorithm") {
        if Algorithm::from_name(name.trim()).is_none() {
            return Err(s3err(
                S3ErrorCode::InvalidRequest,
                format!("Checksum algorithm {name} is not supported."),
            ));
        }
    }
    Ok(out)
}

/// Builds the verified body stream for an upload.
pub(super) fn upload_body(
    body: Option<StreamingBlob>,
    trailers: Option<s3s::TrailingHeaders>,
    content_length: Option<i64>,
    checksums: Vec<(Algorithm, Option<String>)>,
    max_len: u64,
    late: LateChecksums,
    ctx: &super::ReqCtx,
) -> ByteStream {
    let raw: crate::body::RawStream = match body {
        Some(b) => Box::pin(b),
        None => Box::pin(futures::stream::empty()),
    };
    let trailers = trailers.map(|t| {
        Box::new(move || t.read(Clone::clone)) as Box<dyn Fn() -> Option<HeaderMap> + Send + Sync>
    });
    verify_body(
        raw,
        BodySpec {
            expected_len: content_length.and_then(|n| u64::try_from(n).ok()),
            max_len,
            checksums,
            trailers,
            late,
            errors: ctx.0.body_errors.clone(),
        },
    )
}

/// Sets the checksum fields of an output from stored checksums.
macro_rules! set_checksums {
    ($out:expr, $sums:expr) => {{
        let sums = $sums;
        $out.checksum_crc32 = sums.get("CRC32").cloned();
        $out.checksum_crc32c = sums.get("CRC32C").cloned();
        $out.checksum_crc64nvme = sums.get("CRC64NVME").cloned();
        $out.checksum_sha1 = sums.get("SHA1").cloned();
        $out.checksum_sha256 = sums.get("SHA256").cloned();
    }};
}
pub(super) use set_checksums;

fn full_object(sums: &std::collections::BTreeMap<String, String>) -> Option<dto::ChecksumType> {
    (!sums.is_empty()).then(|| dto::ChecksumType::from("FULL_OBJECT".to_owned()))
}

pub(super) async fn put_object(
    a: &Adapter,
    mut req: S3Request<dto::PutObjectInput>,
) -> S3Result<S3Response<dto::PutObjectOutput>> {
    let ctx = ctx_of(&req.extensions);
    check_key(&req.input.key)?;
    let mut attrs = attrs_from_headers(&req.headers, req.input.metadata.as_ref());
    let opts = put_options(&req.headers)?;
    let checksums = checksum_spec(&req.headers)?;
    for (alg, v) in &checksums {
        if let Some(v) = v {
            attrs.checksums.insert(alg.name().to_owned(), v.clone());
        }
    }
    let body = upload_body(
        req.input.body.take(),
        req.trailing_headers.take(),
        req.input.content_length,
        checksums,
        a.config.max_object_size,
        opts.late_checksums.clone(),
        &ctx,
    );
    let info = a
        .backend
        .put_object(&req.input.bucket, &req.input.key, body, attrs, opts)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    if let Some(b) = ctx.body_error() {
        // The backend must not succeed on a failed body; refuse to confirm.
        tracing::error!(error = %b, "backend stored an object whose body failed");
        return Err(crate::error::body_error(&b));
    }
    let mut out = dto::PutObjectOutput {
        e_tag: Some(etag(&info.etag)),
        size: i64::try_from(info.size).ok(),
        ..Default::default()
    };
    set_checksums!(out, &info.attrs.checksums);
    out.checksum_type = full_object(&info.attrs.checksums);
    Ok(S3Response::new(out))
}

/// A parsed `Range` header against an object of known size.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RangeReq {
    Full,
    Part(Range<u64>),
    Unsatisfiable,
}

/// S3's reading of `Range: bytes=…`; syntactically invalid or multi-range
/// headers are ignored (full object), as HTTP allows.
pub(super) fn parse_range(h: Option<&str>, size: u64) -> RangeReq {
    let Some(spec) = h.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeReq::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if first.is_empty() {
        let Some(n) = num(last) else {
            return RangeReq::Full;
        };
        if n == 0 || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(size.saturating_sub(n)..size);
    }
    let Some(a) = num(first) else {
        return RangeReq::Full;
    };
    let b = if last.is_empty() {
        None
    } else {
        match num(last) {
            Some(b) if b >= a => Some(b),
            _ => return RangeReq::Full,
        }
    };
    if a >= size {
        return RangeReq::Unsatisfiable;
    }
    let end = b.map_or(size, |b| b.saturating_add(1).min(size));
    RangeReq::Part(a..end)
}

/// What `?partNumber=N` of an object selects.
struct PartRead {
    info: ObjectInfo,
    /// The part's bytes (`None`: an empty single-part object, read whole).
    range: Option<Range<u64>>,
    /// `x-amz-mp-parts-count`, for multipart objects only (as AWS).
    parts_count: Option<i32>,
    /// The part's own checksum, when the object's checksum is COMPOSITE (a
    /// full-object checksum says nothing about one part).
    checksums: BTreeMap<String, String>,
}

fn invalid_part_number() -> S3Error {
    let mut e = s3err(
        S3ErrorCode::Custom("InvalidPartNumber".into()),
        "The requested partnumber is not satisfiable",
    );
    e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
    e
}

/// Resolves `?partNumber=N`: on a multipart object the N-th part (416
/// `InvalidPartNumber` past the last), on a single-part object part 1 is the
/// whole object and any other number is 416 `InvalidPartNumber`, as AWS
/// answers. Conditions are checked on the object the part belongs to.
async fn select_part(
    a: &Adapter,
    ctx: &super::ReqCtx,
    h: &HeaderMap,
    bucket: &str,
    key: &str,
    n: i32,
) -> S3Result<PartRead> {
    if !(1..=10_000).contains(&n) {
        return Err(s3err(
            S3ErrorCode::InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive",
        ));
    }
    if hdr(h, "range").is_some() {
        return Err(s3err(
            S3ErrorCode::InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter",
        ));
    }
    let (info, parts) = a
        .backend
        .object_parts(bucket, key)
        .await
        .map_err(|e| a.map_err(ctx, e))?;
    check_conditions(h, &info)?;
    // n is 1..=10000 here.
    let idx = (n - 1) as usize;
    match parts {
        Some(parts) => {
            let Some(p) = parts.get(idx) else {
                return Err(invalid_part_number());
            };
            let start: u64 = parts[..idx].iter().map(|p| p.size).sum();
            let composite = info.attrs.checksum_type.as_deref() == Some("COMPOSITE");
            let checksums = if composite {
                p.checksums
                    .iter()
                    .filter(|(k, _)| info.attrs.checksums.contains_key(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            } else {
                BTreeMap::new()
            };
            Ok(PartRead {
                range: Some(start..start + p.size),
                parts_count: i32::try_from(parts.len()).ok(),
                checksums,
                info,
            })
        }
        None if info.etag.contains('-') => Err(s3err(
            S3ErrorCode::NotImplemented,
            "This multipart object was stored before part boundaries were kept; read it with a Range",
        )),
        None if n == 1 => Ok(PartRead {
            range: (info.size > 0).then_some(0..info.size),
            parts_count: None,
            checksums: BTreeMap::new(),
            info,
        }),
        None => Err(invalid_part_number()),
    }
}

/// The checksum type to report for an object's stored checksums.
fn checksum_type_of(info: &ObjectInfo) -> Option<dto::ChecksumType> {
    if info.attrs.checksums.is_empty() {
        return None;
    }
    Some(match &info.attrs.checksum_type {
        Some(t) => dto::ChecksumType::from(t.clone()),
        None => dto::ChecksumType::from_static(dto::ChecksumType::FULL_OBJECT),
    })
}

/// GET of `?partNumber=N`.
async fn get_part(
    a: &Adapter,
    req: &S3Request<dto::GetObjectInput>,
    n: i32,
) -> S3Result<S3Response<dto::GetObjectOutput>> {
    let ctx = ctx_of(&req.extensions);
    let (bucket, key) = (&req.input.bucket, &req.input.key);
    // The part boundaries and the bytes come from two backend calls; if the
    // object is replaced between them, resolve the part again.
    for _ in 0..3 {
        let sel = select_part(a, &ctx, &req.headers, bucket, key, n).await?;
        let (info, stream) = a
            .backend
            .get_object(bucket, key, sel.range.clone())
            .await
            .map_err(|e| a.map_err(&ctx, e))?;
        if info.etag != sel.info.etag || info.last_modified != sel.info.last_modified {
            continue;
        }
        let mut out = get_output(&info, stream, sel.range.as_ref());
        out.parts_count = sel.parts_count;
        if checksum_mode_enabled(&req.headers) {
            part_checksums(&sel, &mut out.checksum_type);
            set_checksums!(out, &read_checksums(&sel));
        }
        let mut resp = S3Response::new(out);
        resp.headers = extra_headers(&info);
        return Ok(resp);
    }
    Err(s3err(
        S3ErrorCode::ServiceUnavailable,
        "The object kept changing while its part was read; please retry",
    ))
}

/// The checksums a part read reports: a single-part object's own (part 1
/// is all of it), else the part's under a COMPOSITE object.
fn read_checksums(sel: &PartRead) -> BTreeMap<String, String> {
    if sel.parts_count.is_none() {
        sel.info.attrs.checksums.clone()
    } else {
        sel.checksums.clone()
    }
}

fn part_checksums(sel: &PartRead, kind: &mut Option<dto::ChecksumType>) {
    *kind = if sel.parts_count.is_none() {
        checksum_type_of(&sel.info)
    } else if sel.checksums.is_empty() {
        None
    } else {
        Some(dto::ChecksumType::from_static(dto::ChecksumType::COMPOSITE))
    };
}

/// HEAD of `?partNumber=N`: the part's length and range, 206 as AWS.
async fn head_part(
    a: &Adapter,
    req: &S3Request<dto::HeadObjectInput>,
    n: i32,
) -> S3Result<S3Response<dto::HeadObjectOutput>> {
    let ctx = ctx_of(&req.extensions);
    let sel = select_part(a, &ctx, &req.headers, &req.input.bucket, &req.input.key, n).await?;
    let info = &sel.info;
    let (len, content_range) = match &sel.range {
        Some(r) => (
            r.end - r.start,
            Some(format!("bytes {}-{}/{}", r.start, r.end - 1, info.size)),
        ),
        None => (info.size, None),
    };
    let partial = content_range.is_some();
    let mut out = dto::HeadObjectOutput {
        accept_ranges: Some("bytes".to_owned()),
        content_length: i64::try_from(len).ok(),
        content_range,
        parts_count: sel.parts_count,
        e_tag: Some(etag(&info.etag)),
        last_modified: Some(ts(info.last_modified)),
        content_type: Some(content_type(info)),
        content_disposition: info.attrs.content_disposition.clone(),
        content_encoding: info.attrs.content_encoding.clone(),
        cache_control: info.attrs.cache_control.clone(),
        metadata: user_metadata(info),
        ..Default::default()
    };
    if checksum_mode_enabled(&req.headers) {
        part_checksums(&sel, &mut out.checksum_type);
        set_checksums!(out, &read_checksums(&sel));
    }
    let mut resp = S3Response::new(out);
    resp.headers = extra_headers(info);
    if partial {
        resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
    }
    Ok(resp)
}

fn invalid_range(size: u64) -> S3Error {
    let mut e = s3err(
        S3ErrorCode::InvalidRange,
        "The requested range is not satisfiable",
    );
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        h.insert(http::header::CONTENT_RANGE, v);
    }
    e.set_headers(h);
    e
}

fn not_modified(info: &ObjectInfo) -> S3Error {
    let mut e = S3Error::new(S3ErrorCode::NotModified);
    e.set_status_code(http::StatusCode::NOT_MODIFIED);
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", info.etag)) {
        h.insert(http::header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(info.last_modified)) {
        h.insert(http::header::LAST_MODIFIED, v);
    }
    e.set_headers(h);
    e
}

fn precondition_failed() -> S3Error {
    s3err(
        S3ErrorCode::PreconditionFailed,
        "At least one of the pre-conditions you specified did not hold",
    )
}

fn check_conditions(h: &HeaderMap, info: &ObjectInfo) -> S3Result<()> {
    match cond::evaluate(h, &cond::PLAIN, &info.etag, info.last_modified, true) {
        Outcome::Proceed => Ok(()),
        Outcome::NotModified => Err(not_modified(info)),
        Outcome::PreconditionFailed => Err(precondition_failed()),
    }
}

/// S3 reports objects stored without a type as binary/octet-stream.
fn content_type(info: &ObjectInfo) -> String {
    info.attrs
        .content_type
        .clone()
        .unwrap_or_else(|| "binary/octet-stream".to_owned())
}

fn checksum_mode_enabled(h: &HeaderMap) -> bool {
    hdr(h, "x-amz-checksum-mode").is_some_and(|v| v.trim().eq_ignore_ascii_case("ENABLED"))
}

/// Headers the typed outputs cannot carry exactly (Expires as stored).
fn extra_headers(info: &ObjectInfo) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = info
        .attrs
        .expires
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        h.insert(http::header::EXPIRES, v);
    }
    h
}

fn user_metadata(info: &ObjectInfo) -> Option<dto::Metadata> {
    (!info.attrs.user_metadata.is_empty()).then(|| {
        info.attrs
            .user_metadata
            .iter()
            .map(|(k, v)| (k.clone(), rfc2047::encode(v)))
            .collect()
    })
}

/// A GET's answer for `info`'s bytes in `range` (all of them if none):
/// the body, its length and range, and the object's stored headers.
fn get_output(
    info: &ObjectInfo,
    stream: ByteStream,
    range: Option<&std::ops::Range<u64>>,
) -> dto::GetObjectOutput {
    let (len, content_range) = match range {
        Some(r) => (
            r.end - r.start,
            Some(format!("bytes {}-{}/{}", r.start, r.end - 1, info.size)),
        ),
        None => (info.size, None),
    };
    dto::GetObjectOutput {
        body: Some(body_of(stream)),
        accept_ranges: Some("bytes".to_owned()),
        content_length: i64::try_from(len).ok(),
        content_range,
        e_tag: Some(etag(&info.etag)),
        last_modified: Some(ts(info.last_modified)),
        content_type: Some(content_type(info)),
        content_disposition: info.attrs.content_disposition.clone(),
        content_encoding: info.attrs.content_encoding.clone(),
        cache_control: info.attrs.cache_control.clone(),
        metadata: user_metadata(info),
        ..Default::default()
    }
}

fn body_of(stream: ByteStream) -> StreamingBlob {
    StreamingBlob::wrap(sync_wrapper::SyncStream::new(stream))
}

pub(super) async fn get_object(
    a: &Adapter,
    req: S3Request<dto::GetObjectInput>,
) -> S3Result<S3Response<dto::GetObjectOutput>> {
    let ctx = ctx_of(&req.extensions);
    let (bucket, key) = (&req.input.bucket, &req.input.key);
    check_key(key)?;
    if let Some(n) = req.input.part_number {
        return get_part(a, &req, n).await;
    }
    let range_header = hdr(&req.headers, "range");
    let (info, stream, range) = if range_header.is_none() {
        // The common case costs one backend call: conditions are checked on
        // the metadata that comes with the stream.
        let (info, stream) = a
            .backend
            .get_object(bucket, key, None)
            .await
            .map_err(|e| a.map_err(&ctx, e))?;
        check_conditions(&req.headers, &info)?;
        (info, stream, None)
    } else {
        // A range needs the size first (suffix ranges, 416).
        let head = a
            .backend
            .head_object(bucket, key)
            .await
            .map_err(|e| a.map_err(&ctx, e))?;
        check_conditions(&req.headers, &head)?;
        let range = match parse_range(range_header, head.size) {
            RangeReq::Full => None,
            RangeReq::Part(r) => Some(r),
            RangeReq::Unsatisfiable => return Err(invalid_range(head.size)),
        };
        let (info, stream) = a
            .backend
            .get_object(bucket, key, range.clone())
            .await
            .map_err(|e| a.map_err(&ctx, e))?;
        // The object may have been replaced since the HEAD: re-check against
        // what is actually being sent.
        if info.etag != head.etag {
            check_conditions(&req.headers, &info)?;
            if range.as_ref().is_some_and(|r| r.end > info.size) {
                return Err(invalid_range(info.size));
            }
        }
        (info, stream, range)
    };
    let mut out = get_output(&info, stream, range.as_ref());
    // A whole-object checksum describes the whole object only: never on 206.
    if range.is_none() && checksum_mode_enabled(&req.headers) {
        set_checksums!(out, &info.attrs.checksums);
        out.checksum_type = checksum_type_of(&info);
    }
    let mut resp = S3Response::new(out);
    resp.headers = extra_headers(&info);
    Ok(resp)
}

pub(super) async fn head_object(
    a: &Adapter,
    req: S3Request<dto::HeadObjectInput>,
) -> S3Result<S3Response<dto::HeadObjectOutput>> {
    let ctx = ctx_of(&req.extensions);
    let (bucket, key) = (&req.input.bucket, &req.input.key);
    check_key(key)?;
    if let Some(n) = req.input.part_number {
        return head_part(a, &req, n).await;
    }
    let info = a
        .backend
        .head_object(bucket, key)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    check_conditions(&req.headers, &info)?;
    let range = match parse_range(hdr(&req.headers, "range"), info.size) {
        RangeReq::Full => None,
        RangeReq::Part(r) => Some(r),
        RangeReq::Unsatisfiable => return Err(invalid_range(info.size)),
    };
    let (len, content_range) = match &range {
        Some(r) => (
            r.end - r.start,
            Some(format!("bytes {}-{}/{}", r.start, r.end - 1, info.size)),
        ),
        None => (info.size, None),
    };
    let mut out = dto::HeadObjectOutput {
        accept_ranges: Some("bytes".to_owned()),
        content_length: i64::try_from(len).ok(),
        content_range,
        e_tag: Some(etag(&info.etag)),
        last_modified: Some(ts(info.last_modified)),
        content_type: Some(content_type(&info)),
        content_disposition: info.attrs.content_disposition.clone(),
        content_encoding: info.attrs.content_encoding.clone(),
        cache_control: info.attrs.cache_control.clone(),
        metadata: user_metadata(&info),
        ..Default::default()
    };
    if range.is_none() && checksum_mode_enabled(&req.headers) {
        set_checksums!(out, &info.attrs.checksums);
        out.checksum_type = checksum_type_of(&info);
    }
    let mut resp = S3Response::new(out);
    resp.headers = extra_headers(&info);
    Ok(resp)
}

fn check_version(v: Option<&str>) -> S3Result<()> {
    match v {
        None | Some("null") => Ok(()),
        Some(_) => Err(s3err(
            S3ErrorCode::InvalidArgument,
            "Invalid version id specified",
        )),
    }
}

pub(super) async fn delete_object(
    a: &Adapter,
    req: S3Request<dto::DeleteObjectInput>,
) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
    let ctx = ctx_of(&req.extensions);
    check_key(&req.input.key)?;
    check_version(req.input.version_id.as_deref())?;
    a.backend
        .delete_object(&req.input.bucket, &req.input.key)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::DeleteObjectOutput {
        version_id: req.input.version_id,
        ..Default::default()
    }))
}

pub(super) async fn delete_objects(
    a: &Adapter,
    req: S3Request<dto::DeleteObjectsInput>,
) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
    let ctx = ctx_of(&req.extensions);
    let bucket = &req.input.bucket;
    let quiet = req.input.delete.quiet.unwrap_or(false);
    if req.input.delete.objects.len() > 1000 {
        return Err(s3err(
            S3ErrorCode::MalformedXML,
            "The XML you provided was not well-formed or did not validate against our published schema",
        ));
    }
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for obj in &req.input.delete.objects {
        let result = match check_key(&obj.key).and(check_version(obj.version_id.as_deref())) {
            Err(e) => Err(e),
            Ok(()) => a
                .backend
                .delete_object(bucket, &obj.key)
                .await
                .map_err(|e| a.map_err(&ctx, e)),
        };
        match result {
            Ok(()) => {
                if !quiet {
                    deleted.push(dto::DeletedObject {
                        key: Some(obj.key.clone()),
                        version_id: obj.version_id.clone(),
                        ..Default::default()
                    });
                }
            }
            Err(e) => errors.push(dto::Error {
                code: Some(e.code().as_str().to_owned()),
                key: Some(obj.key.clone()),
                message: e.message().map(str::to_owned),
                version_id: obj.version_id.clone(),
            }),
        }
    }
    Ok(S3Response::new(dto::DeleteObjectsOutput {
        deleted: Some(deleted),
        errors: (!errors.is_empty()).then_some(errors),
        ..Default::default()
    }))
}

/// The bucket and key of `x-amz-copy-source`.
pub(super) fn copy_source(src: &dto::CopySource) -> S3Result<(String, String)> {
    match src {
        dto::CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            check_version(version_id.as_deref())?;
            check_key(key)?;
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(s3err(
            S3ErrorCode::NotImplemented,
            "Only bucket/key copy sources are supported",
        )),
    }
}

pub(super) fn check_copy_conditions(h: &HeaderMap, src: &ObjectInfo) -> S3Result<()> {
    match cond::evaluate(h, &cond::COPY_SOURCE, &src.etag, src.last_modified, false) {
        Outcome::Proceed => Ok(()),
        _ => Err(precondition_failed()),
    }
}

pub(super) async fn copy_object(
    a: &Adapter,
    req: S3Request<dto::CopyObjectInput>,
) -> S3Result<S3Response<dto::CopyObjectOutput>> {
    let ctx = ctx_of(&req.extensions);
    let user = a.user(&req)?;
    let (dst_bucket, dst_key) = (&req.input.bucket, &req.input.key);
    check_key(dst_key)?;
    let (src_bucket, src_key) = copy_source(&req.input.copy_source)?;
    a.check_read(Some(&user), &src_bucket).await?;
    let src = a
        .backend
        .head_object(&src_bucket, &src_key)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    check_copy_conditions(&req.headers, &src)?;
    let replace = match hdr(&req.headers, "x-amz-metadata-directive").map(str::trim) {
        None => false,
        Some(d) if d.eq_ignore_ascii_case("COPY") => false,
        Some(d) if d.eq_ignore_ascii_case("REPLACE") => true,
        Some(_) => {
            return Err(s3err(
                S3ErrorCode::InvalidArgument,
                "Unknown metadata directive.",
            ))
        }
    };
    if !replace && src_bucket == *dst_bucket && src_key == *dst_key {
        return Err(s3err(
            S3ErrorCode::InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let attrs = replace.then(|| {
        let mut attrs = attrs_from_headers(&req.headers, req.input.metadata.as_ref());
        // The data is unchanged, so its verified checksums still hold.
        attrs.checksums = src.attrs.checksums.clone();
        attrs
    });
    let mut opts = put_options(&req.headers)?;
    // Content-MD5 on a copy describes the (empty) request body.
    opts.content_md5 = None;
    let info = a
        .backend
        .copy_object(&src_bucket, &src_key, dst_bucket, dst_key, attrs, opts)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::CopyObjectOutput {
        copy_object_result: Some(dto::CopyObjectResult {
            e_tag: Some(etag(&info.etag)),
            last_modified: Some(ts(info.last_modified)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        let r = |h: &str, size| parse_range(Some(h), size);
        assert_eq!(r("bytes=0-9", 100), Part(0..10));
        assert_eq!(r("bytes=90-200", 100), Part(90..100));
        assert_eq!(r("bytes=10-", 100), Part(10..100));
        assert_eq!(r("bytes=-10", 100), Part(90..100));
        assert_eq!(r("bytes=-1000", 100), Part(0..100));
        assert_eq!(r("bytes=100-", 100), Unsatisfiable);
        assert_eq!(r("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(r("bytes=-0", 100), Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(r("bytes=9-3", 100), Full);
        assert_eq!(r("bytes=a-b", 100), Full);
        assert_eq!(r("items=0-1", 100), Full);
        assert_eq!(r("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range(None, 100), Full);
    }

    #[test]
    fn aws_chunked_is_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("content-encoding", HeaderValue::from_static("aws-chunked"));
        assert_eq!(attrs_from_headers(&h, None).content_encoding, None);
        h.insert(
            "content-encoding",
            HeaderValue::from_static("gzip, aws-chunked"),
        );
        assert_eq!(
            attrs_from_headers(&h, None).content_encoding.as_deref(),
            Some("gzip")
        );
    }
}
