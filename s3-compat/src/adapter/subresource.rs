//! Bucket and object sub-resources we do not support as features but that
//! common tools read (s3cmd `info`, the AWS CLI, rclone): answered with the
//! fixed truth — owner-only ACLs, no policy/CORS/lifecycle/tags/encryption
//! configuration, unversioned buckets.

use http::StatusCode;
use s3s::dto;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::{check_key, ctx_of, s3err, Adapter};

/// The owner's FULL_CONTROL grant, the only ACL buckets and objects have.
async fn owner_acl(
    a: &Adapter,
    bucket: &str,
    ctx: &super::ReqCtx,
) -> S3Result<(dto::Owner, Vec<dto::Grant>)> {
    let info = a
        .backend
        .head_bucket(bucket)
        .await
        .map_err(|e| a.map_err(ctx, e))?;
    let display_name = match ctx.user() {
        Some(u) if u.id == info.owner => u.display_name,
        _ => info.owner.clone(),
    };
    let owner = dto::Owner {
        id: Some(info.owner.clone()),
        display_name: Some(display_name.clone()),
    };
    let grant = dto::Grant {
        grantee: Some(dto::Grantee {
            display_name: Some(display_name),
            email_address: None,
            id: Some(info.owner),
            type_: dto::Type::from_static(dto::Type::CANONICAL_USER),
            uri: None,
        }),
        permission: Some(dto::Permission::from_static(dto::Permission::FULL_CONTROL)),
    };
    Ok((owner, vec![grant]))
}

pub(super) async fn get_bucket_acl(
    a: &Adapter,
    req: S3Request<dto::GetBucketAclInput>,
) -> S3Result<S3Response<dto::GetBucketAclOutput>> {
    let ctx = ctx_of(&req.extensions);
    let (owner, grants) = owner_acl(a, &req.input.bucket, &ctx).await?;
    Ok(S3Response::new(dto::GetBucketAclOutput {
        owner: Some(owner),
        grants: Some(grants),
    }))
}

pub(super) async fn get_object_acl(
    a: &Adapter,
    req: S3Request<dto::GetObjectAclInput>,
) -> S3Result<S3Response<dto::GetObjectAclOutput>> {
    let ctx = ctx_of(&req.extensions);
    check_key(&req.input.key)?;
    a.backend
        .head_object(&req.input.bucket, &req.input.key)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    let (owner, grants) = owner_acl(a, &req.input.bucket, &ctx).await?;
    Ok(S3Response::new(dto::GetObjectAclOutput {
        owner: Some(owner),
        grants: Some(grants),
        request_charged: None,
    }))
}

/// Checks the bucket exists, then answers "not configured".
pub(super) async fn not_configured<T>(
    a: &Adapter,
    req: &S3Request<T>,
    bucket: &str,
    code: &str,
    what: &str,
) -> S3Error {
    let ctx = ctx_of(&req.extensions);
    if let Err(e) = a.backend.head_bucket(bucket).await {
        return a.map_err(&ctx, e);
    }
    let code = match code {
        "NoSuchBucketPolicy" => S3ErrorCode::NoSuchBucketPolicy,
        "NoSuchCORSConfiguration" => S3ErrorCode::NoSuchCORSConfiguration,
        "NoSuchLifecycleConfiguration" => S3ErrorCode::NoSuchLifecycleConfiguration,
        "NoSuchTagSet" => S3ErrorCode::NoSuchTagSet,
        other => S3ErrorCode::Custom(other.to_owned().into()),
    };
    let mut e = s3err(code, format!("The bucket does not have a {what}"));
    e.set_status_code(StatusCode::NOT_FOUND);
    e
}

pub(super) async fn get_bucket_versioning(
    a: &Adapter,
    req: S3Request<dto::GetBucketVersioningInput>,
) -> S3Result<S3Response<dto::GetBucketVersioningOutput>> {
    let ctx = ctx_of(&req.extensions);
    a.backend
        .head_bucket(&req.input.bucket)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::GetBucketVersioningOutput::default()))
}

pub(super) async fn get_bucket_request_payment(
    a: &Adapter,
    req: S3Request<dto::GetBucketRequestPaymentInput>,
) -> S3Result<S3Response<dto::GetBucketRequestPaymentOutput>> {
    let ctx = ctx_of(&req.extensions);
    a.backend
        .head_bucket(&req.input.bucket)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::GetBucketRequestPaymentOutput {
        payer: Some(dto::Payer::from_static(dto::Payer::BUCKET_OWNER)),
    }))
}

pub(super) async fn get_object_tagging(
    a: &Adapter,
    req: S3Request<dto::GetObjectTaggingInput>,
) -> S3Result<S3Response<dto::GetObjectTaggingOutput>> {
    let ctx = ctx_of(&req.extensions);
    check_key(&req.input.key)?;
    a.backend
        .head_object(&req.input.bucket, &req.input.key)
        .await
        .map_err(|e| a.map_err(&ctx, e))?;
    Ok(S3Response::new(dto::GetObjectTaggingOutput {
        tag_set: Vec::new(),
        version_id: None,
    }))
}
