//! Multipart uploads.

use s3s::dto;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use super::object::{
    attrs_from_headers, check_copy_conditions, checksum_spec, copy_source, parse_md5, put_options,
    set_checksums, upload_body,
};
use super::{check_key, ctx_of, etag, hdr, s3err, ts, Adapter, ReqCtx};
use crate::backend::{LateChecksums, UploadInfo};
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
    let attrs = attrs_from_headers(&req.headers, req.input.metadata.as_ref());
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
    find_upload(a, &ctx, &bucket, &key, &req.input.upload_id).await?;
    let content_md5 = match hdr(&req.headers, "content-md5") {
        Some(v) => Some(parse_md5(v)?),
        None => None,
    };
    let checksums = checksum_spec(&req.headers)?;
    let late = LateChecksums::default();
    let body = upload_body(
        req.input.body.take(),
        req.trailing_headers.take(),
        req.input.content_length,
        checksums,
        a.config.max_object_size.min(MAX_PART_SIZE),
        late.clone(),
        &ctx,
    );
    let part = a
        .backend
        .upload_part(&req.input.upload_id, n, body, content_md5)
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
    find_upload(a, &ctx, &i.bucket, &i.key, &i.upload_id).await?;
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
    let part = a
        .backend
        .upload_part_copy(&i.upload_id, n, &src_bucket, &src_key, range)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::UploadPartCopyOutput {
        copy_part_result: Some(dto::CopyPartResult {
            e_tag: Some(etag(&part.etag)),
            last_modified: Some(ts(part.last_modified)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

fn malformed_xml() -> s3s::S3Error {
    s3err(
        S3ErrorCode::MalformedXML,
        "The XML you provided was not well-formed or did not validate against our published schema",
    )
}

pub(super) async fn complete(
    a: &Adapter,
    req: S3Request<dto::CompleteMultipartUploadInput>,
) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    check_key(&i.key)?;
    find_upload(a, &ctx, &i.bucket, &i.key, &i.upload_id).await?;
    let parts = i
        .multipart_upload
        .as_ref()
        .and_then(|m| m.parts.as_ref())
        .filter(|p| !p.is_empty())
        .ok_or_else(malformed_xml)?;
    let mut list = Vec::with_capacity(parts.len());
    for p in parts {
        let n = p.part_number.ok_or_else(malformed_xml)?;
        let n = part_number(n).map_err(|_| {
            s3err(
                S3ErrorCode::InvalidPart,
                "One or more of the specified parts could not be found.",
            )
        })?;
        let e = p.e_tag.as_ref().ok_or_else(malformed_xml)?;
        list.push((n, cond::bare_etag(e.value()).to_owned()));
    }
    let mut opts = put_options(&req.headers)?;
    opts.content_md5 = None; // an MD5 of the XML request, not of the object
    let info = a
        .backend
        .complete_multipart(&i.upload_id, list, opts)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
        bucket: Some(info.bucket.clone()),
        key: Some(info.key.clone()),
        e_tag: Some(etag(&info.etag)),
        location: Some(format!("/{}/{}", info.bucket, info.key)),
        ..Default::default()
    }))
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
    find_upload(a, &ctx, &i.bucket, &i.key, &i.upload_id).await?;
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
        parts: Some(
            page.into_iter()
                .map(|p| dto::Part {
                    part_number: i32::try_from(p.part_number).ok(),
                    e_tag: Some(etag(&p.etag)),
                    size: i64::try_from(p.size).ok(),
                    last_modified: Some(ts(p.last_modified)),
                    ..Default::default()
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
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }))
}
