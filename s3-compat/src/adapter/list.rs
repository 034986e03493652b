//! ListObjects (v1, v2) and ListObjectVersions.

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use s3s::dto;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use super::{ctx_of, etag, s3err, ts, Adapter};
use crate::backend::ObjectInfo;
use crate::list::{list, ListParams, Listing};

/// Characters left as they are by `encoding-type=url`.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

struct Enc(bool);

impl Enc {
    fn new(e: Option<&dto::EncodingType>) -> S3Result<Self> {
        match e.map(dto::EncodingType::as_str) {
            None => Ok(Self(false)),
            Some(s) if s.eq_ignore_ascii_case("url") => Ok(Self(true)),
            Some(_) => Err(s3err(
                S3ErrorCode::InvalidArgument,
                "Invalid Encoding Method specified in Request",
            )),
        }
    }

    fn s(&self, s: &str) -> String {
        if self.0 {
            utf8_percent_encode(s, KEEP).to_string()
        } else {
            s.to_owned()
        }
    }

    fn o(&self, s: Option<&str>) -> Option<String> {
        s.map(|s| self.s(s))
    }
}

fn max_keys(m: Option<i32>) -> S3Result<usize> {
    match m {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3err(
            S3ErrorCode::InvalidArgument,
            "max-keys must be non-negative",
        )),
        Some(n) => Ok(usize::try_from(n).unwrap_or(1000).min(1000)),
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

async fn owner(a: &Adapter, bucket: &str, ctx: &super::ReqCtx) -> S3Result<dto::Owner> {
    let info = a
        .backend
        .head_bucket(bucket)
        .await
        .map_err(|e| a.map_err(ctx, e))?;
    let display_name = match ctx.user() {
        Some(u) if u.id == info.owner => u.display_name,
        _ => info.owner.clone(),
    };
    Ok(dto::Owner {
        id: Some(info.owner),
        display_name: Some(display_name),
    })
}

fn object(o: &ObjectInfo, enc: &Enc, owner: Option<&dto::Owner>) -> dto::Object {
    dto::Object {
        key: Some(enc.s(&o.key)),
        last_modified: Some(ts(o.last_modified)),
        e_tag: Some(etag(&o.etag)),
        size: i64::try_from(o.size).ok(),
        storage_class: Some(dto::ObjectStorageClass::from_static(
            dto::ObjectStorageClass::STANDARD,
        )),
        owner: owner.cloned(),
        ..Default::default()
    }
}

fn prefixes(l: &Listing, enc: &Enc) -> Option<Vec<dto::CommonPrefix>> {
    let v: Vec<_> = l
        .prefixes()
        .map(|p| dto::CommonPrefix {
            prefix: Some(enc.s(p)),
        })
        .collect();
    (!v.is_empty()).then_some(v)
}

pub(super) async fn list_objects(
    a: &Adapter,
    req: S3Request<dto::ListObjectsInput>,
) -> S3Result<S3Response<dto::ListObjectsOutput>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    let enc = Enc::new(i.encoding_type.as_ref())?;
    let params = ListParams {
        prefix: i.prefix.clone().unwrap_or_default(),
        delimiter: non_empty(i.delimiter.clone()),
        after: non_empty(i.marker.clone()),
        max_keys: max_keys(i.max_keys)?,
    };
    let owner = owner(a, &i.bucket, &ctx).await?;
    let l = list(a.backend.as_ref(), &i.bucket, &params)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    let contents = l.objects().map(|o| object(o, &enc, Some(&owner))).collect();
    Ok(S3Response::new(dto::ListObjectsOutput {
        name: Some(i.bucket.clone()),
        prefix: Some(enc.s(&params.prefix)),
        marker: Some(enc.s(i.marker.as_deref().unwrap_or(""))),
        next_marker: if l.is_truncated {
            enc.o(l.last.as_deref())
        } else {
            None
        },
        max_keys: i32::try_from(params.max_keys).ok(),
        delimiter: enc.o(params.delimiter.as_deref()),
        is_truncated: Some(l.is_truncated),
        common_prefixes: prefixes(&l, &enc),
        contents: Some(contents),
        encoding_type: i.encoding_type.clone(),
        ..Default::default()
    }))
}

fn encode_token(cursor: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor.as_bytes())
}

fn decode_token(token: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3err(
                S3ErrorCode::InvalidArgument,
                "The continuation token provided is incorrect",
            )
        })
}

pub(super) async fn list_objects_v2(
    a: &Adapter,
    req: S3Request<dto::ListObjectsV2Input>,
) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    let enc = Enc::new(i.encoding_type.as_ref())?;
    let after = match non_empty(i.continuation_token.clone()) {
        Some(t) => Some(decode_token(&t)?),
        None => non_empty(i.start_after.clone()),
    };
    let params = ListParams {
        prefix: i.prefix.clone().unwrap_or_default(),
        delimiter: non_empty(i.delimiter.clone()),
        after,
        max_keys: max_keys(i.max_keys)?,
    };
    let owner = if i.fetch_owner == Some(true) {
        Some(owner(a, &i.bucket, &ctx).await?)
    } else {
        a.backend
            .head_bucket(&i.bucket)
            .await
            .map_err(|e| a.map_err(&ctx, e))?;
        None
    };
    let l = list(a.backend.as_ref(), &i.bucket, &params)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    let contents: Vec<_> = l
        .objects()
        .map(|o| object(o, &enc, owner.as_ref()))
        .collect();
    Ok(S3Response::new(dto::ListObjectsV2Output {
        name: Some(i.bucket.clone()),
        prefix: Some(enc.s(&params.prefix)),
        delimiter: enc.o(params.delimiter.as_deref()),
        max_keys: i32::try_from(params.max_keys).ok(),
        key_count: i32::try_from(l.entries.len()).ok(),
        continuation_token: i.continuation_token.clone(),
        next_continuation_token: l.next_cursor.as_deref().map(encode_token),
        start_after: enc.o(i.start_after.as_deref()),
        is_truncated: Some(l.is_truncated),
        common_prefixes: prefixes(&l, &enc),
        contents: Some(contents),
        encoding_type: i.encoding_type.clone(),
        ..Default::default()
    }))
}

pub(super) async fn list_object_versions(
    a: &Adapter,
    req: S3Request<dto::ListObjectVersionsInput>,
) -> S3Result<S3Response<dto::ListObjectVersionsOutput>> {
    let ctx = ctx_of(&req.extensions);
    let i = &req.input;
    let enc = Enc::new(i.encoding_type.as_ref())?;
    let params = ListParams {
        prefix: i.prefix.clone().unwrap_or_default(),
        delimiter: non_empty(i.delimiter.clone()),
        after: non_empty(i.key_marker.clone()),
        max_keys: max_keys(i.max_keys)?,
    };
    let owner = owner(a, &i.bucket, &ctx).await?;
    let l = list(a.backend.as_ref(), &i.bucket, &params)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    // Buckets are unversioned: every object is its only, current version.
    let versions = l
        .objects()
        .map(|o| dto::ObjectVersion {
            key: Some(enc.s(&o.key)),
            version_id: Some("null".to_owned()),
            is_latest: Some(true),
            last_modified: Some(ts(o.last_modified)),
            e_tag: Some(etag(&o.etag)),
            size: i64::try_from(o.size).ok(),
            storage_class: Some(dto::ObjectVersionStorageClass::from_static(
                dto::ObjectVersionStorageClass::STANDARD,
            )),
            owner: Some(owner.clone()),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(dto::ListObjectVersionsOutput {
        name: Some(i.bucket.clone()),
        prefix: Some(enc.s(&params.prefix)),
        delimiter: enc.o(params.delimiter.as_deref()),
        key_marker: Some(enc.s(i.key_marker.as_deref().unwrap_or(""))),
        version_id_marker: i.version_id_marker.clone(),
        max_keys: i32::try_from(params.max_keys).ok(),
        is_truncated: Some(l.is_truncated),
        next_key_marker: if l.is_truncated {
            enc.o(l.last.as_deref())
        } else {
            None
        },
        next_version_id_marker: l.is_truncated.then(|| "null".to_owned()),
        versions: Some(versions),
        common_prefixes: prefixes(&l, &enc),
        encoding_type: i.encoding_type.clone(),
        ..Default::default()
    }))
}
