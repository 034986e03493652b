//! Bucket operations.

use base64::Engine as _;
use s3s::dto;
use s3s::{S3ErrorCode, S3Request, S3Response, S3Result};

use crate::backend::BackendError;

use super::{ctx_of, s3err, ts, valid_bucket_name, Adapter};

/// ListBuckets answers at most this many buckets per page unless
/// `max-buckets` asks for fewer (AWS's bound).
const MAX_BUCKETS_PAGE: i32 = 10_000;

pub(super) async fn list_buckets(
    a: &Adapter,
    req: S3Request<dto::ListBucketsInput>,
) -> S3Result<S3Response<dto::ListBucketsOutput>> {
    let ctx = ctx_of(&req.extensions);
    let user = a.user(&req)?;
    let page = match req.input.max_buckets {
        None => MAX_BUCKETS_PAGE,
        Some(n) if (1..=MAX_BUCKETS_PAGE).contains(&n) => n,
        Some(_) => {
            return Err(s3err(
                S3ErrorCode::InvalidArgument,
                "Argument max-buckets must be an integer between 1 and 10000.",
            ))
        }
    };
    // The continuation token is the last name of the previous page, opaque
    // to clients (base64), so it never has to name a bucket that still exists.
    let after = match req.input.continuation_token.as_deref() {
        None | Some("") => None,
        Some(t) => Some(decode_token(t).ok_or_else(|| {
            s3err(
                S3ErrorCode::InvalidArgument,
                "The continuation token provided is incorrect.",
            )
        })?),
    };
    let mut buckets = a
        .backend
        .list_buckets(&user.id)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    buckets.sort_by(|x, y| x.name.cmp(&y.name));
    let prefix = req.input.prefix.clone().unwrap_or_default();
    let mut matching = buckets
        .into_iter()
        .filter(|b| b.name.starts_with(&prefix))
        .filter(|b| after.as_ref().is_none_or(|last| b.name > *last))
        .peekable();
    let mut listed = Vec::new();
    while listed.len() < page as usize {
        let Some(b) = matching.next() else { break };
        listed.push(b);
    }
    let continuation_token = match (matching.peek(), listed.last()) {
        (Some(_), Some(last)) => Some(encode_token(&last.name)),
        _ => None,
    };
    let buckets = listed
        .into_iter()
        .map(|b| dto::Bucket {
            name: Some(b.name),
            creation_date: Some(ts(b.created)),
            bucket_region: Some(a.config.region.clone()),
        })
        .collect();
    Ok(S3Response::new(dto::ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(dto::Owner {
            id: Some(user.id),
            display_name: Some(user.display_name),
        }),
        prefix: req.input.prefix,
        continuation_token,
    }))
}

fn encode_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

fn decode_token(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(raw).ok()
}

pub(super) async fn create_bucket(
    a: &Adapter,
    req: S3Request<dto::CreateBucketInput>,
) -> S3Result<S3Response<dto::CreateBucketOutput>> {
    let ctx = ctx_of(&req.extensions);
    let user = a.user(&req)?;
    let name = &req.input.bucket;
    if !valid_bucket_name(name) {
        return Err(s3err(
            S3ErrorCode::InvalidBucketName,
            "The specified bucket is not valid.",
        ));
    }
    if let Some(lc) = req
        .input
        .create_bucket_configuration
        .as_ref()
        .and_then(|c| c.location_constraint.as_ref())
    {
        let lc = lc.as_str();
        if !lc.is_empty() && lc != a.config.region {
            return Err(s3err(
                S3ErrorCode::InvalidLocationConstraint,
                format!(
                    "The specified location-constraint is not valid; this endpoint serves {}",
                    a.config.region
                ),
            ));
        }
    }
    match a.backend.create_bucket(&user.id, name).await {
        Ok(()) => {}
        // us-east-1 answers a create of a bucket you already own with 200
        // and leaves it as it is; every other region says so.
        Err(BackendError::BucketAlreadyOwnedByYou) if a.config.region == "us-east-1" => {}
        Err(e) => return Err(a.map_err(&ctx, e)),
    }
    Ok(S3Response::new(dto::CreateBucketOutput {
        location: Some(format!("/{name}")),
    }))
}

pub(super) async fn head_bucket(
    a: &Adapter,
    req: S3Request<dto::HeadBucketInput>,
) -> S3Result<S3Response<dto::HeadBucketOutput>> {
    let ctx = ctx_of(&req.extensions);
    a.backend
        .head_bucket(&req.input.bucket)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    let mut resp = S3Response::new(dto::HeadBucketOutput {
        bucket_region: Some(a.config.region.clone()),
        ..Default::default()
    });
    if let Ok(v) = a.config.region.parse() {
        resp.headers.insert("x-amz-bucket-region", v);
    }
    Ok(resp)
}

pub(super) async fn delete_bucket(
    a: &Adapter,
    req: S3Request<dto::DeleteBucketInput>,
) -> S3Result<S3Response<dto::DeleteBucketOutput>> {
    let ctx = ctx_of(&req.extensions);
    a.backend
        .delete_bucket(&req.input.bucket)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::DeleteBucketOutput {}))
}

pub(super) async fn get_bucket_location(
    a: &Adapter,
    req: S3Request<dto::GetBucketLocationInput>,
) -> S3Result<S3Response<dto::GetBucketLocationOutput>> {
    let ctx = ctx_of(&req.extensions);
    a.backend
        .head_bucket(&req.input.bucket)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    // us-east-1 is reported as an empty LocationConstraint.
    let location_constraint = (a.config.region != "us-east-1")
        .then(|| dto::BucketLocationConstraint::from(a.config.region.clone()));
    Ok(S3Response::new(dto::GetBucketLocationOutput {
        location_constraint,
    }))
}
