//! The thin layer between s3s and [`Backend`]: one s3s `S3` implementation
//! that parses typed inputs into backend calls and backend results into
//! typed outputs. All s3s types stay inside this crate.

mod bucket;
mod list;
mod multipart;
mod object;
mod subresource;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use http::HeaderMap;
use s3s::dto::{self, Timestamp};
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use crate::auth::{CredentialStore, User};
use crate::backend::{Backend, BackendError, BodyError};
use crate::body::BodyErrorSlot;
use crate::config::S3Config;
use crate::error::{backend_error, body_error};

/// Per-request state shared between the service wrapper, the access check
/// and the operation handlers (carried in the request extensions).
#[derive(Clone)]
pub(crate) struct ReqCtx(pub(crate) Arc<ReqCtxInner>);

pub(crate) struct ReqCtxInner {
    /// Bucket and key the request addresses, for logs.
    pub target: Mutex<(Option<String>, Option<String>)>,
    pub op: Mutex<String>,
    pub user: Mutex<Option<User>>,
    pub body_errors: BodyErrorSlot,
}

impl ReqCtx {
    pub(crate) fn new() -> Self {
        Self(Arc::new(ReqCtxInner {
            target: Mutex::new((None, None)),
            op: Mutex::new("Unknown".to_owned()),
            user: Mutex::new(None),
            body_errors: BodyErrorSlot::default(),
        }))
    }

    pub(crate) fn set_op(&self, op: &str) {
        if let Ok(mut g) = self.0.op.lock() {
            op.clone_into(&mut g);
        }
    }

    pub(crate) fn op(&self) -> String {
        self.0
            .op
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|_| "Unknown".to_owned())
    }

    pub(crate) fn set_target(&self, bucket: Option<&str>, key: Option<&str>) {
        if let Ok(mut g) = self.0.target.lock() {
            *g = (bucket.map(str::to_owned), key.map(str::to_owned));
        }
    }

    pub(crate) fn target(&self) -> (Option<String>, Option<String>) {
        self.0.target.lock().map(|g| g.clone()).unwrap_or_default()
    }

    pub(crate) fn set_user(&self, u: User) {
        if let Ok(mut g) = self.0.user.lock() {
            *g = Some(u);
        }
    }

    pub(crate) fn user(&self) -> Option<User> {
        self.0.user.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn body_error(&self) -> Option<BodyError> {
        self.0.body_errors.get()
    }
}

pub(crate) struct Adapter {
    pub backend: Arc<dyn Backend>,
    pub creds: Arc<dyn CredentialStore>,
    pub config: Arc<S3Config>,
    /// Recently completed multipart uploads, for retried completions.
    pub completed: multipart::Completed,
}

pub(crate) fn ctx_of(ext: &http::Extensions) -> ReqCtx {
    ext.get::<ReqCtx>().cloned().unwrap_or_else(ReqCtx::new)
}

impl Adapter {
    /// Maps a backend error, preferring the body error that caused it.
    pub(crate) fn map_err(&self, ctx: &ReqCtx, e: BackendError) -> S3Error {
        match ctx.body_error() {
            Some(b) => body_error(&b),
            None => backend_error(&e),
        }
    }

    /// The signed-in user, or AccessDenied for anonymous requests.
    pub(crate) fn user<T>(&self, req: &S3Request<T>) -> S3Result<User> {
        if let Some(u) = ctx_of(&req.extensions).user() {
            return Ok(u);
        }
        if let Some(c) = &req.credentials {
            if let Some(cred) = self.creds.lookup(&c.access_key) {
                return Ok(cred.user);
            }
        }
        Err(S3Error::with_message(
            S3ErrorCode::AccessDenied,
            "Access Denied",
        ))
    }

    /// Whether `user` (None: anonymous) may read from `bucket` — used for
    /// copy sources, which the access check does not see.
    pub(crate) async fn check_read(&self, user: Option<&User>, bucket: &str) -> S3Result<()> {
        let info = self
            .backend
            .head_bucket(bucket)
            .await
            .map_err(|e| backend_error(&e))?;
        let owned = user.is_some_and(|u| u.id == info.owner);
        if owned || self.config.anonymous_read_buckets.contains(bucket) {
            Ok(())
        } else {
            Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "Access Denied",
            ))
        }
    }
}

pub(crate) fn ts(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

pub(crate) fn etag(s: &str) -> dto::ETag {
    dto::ETag::Strong(s.to_owned())
}

pub(crate) fn hdr<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn s3err(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

/// Keys over 1024 bytes and keys with NUL are refused; anything else,
/// `../x` included, is just a key.
pub(crate) fn check_key(key: &str) -> S3Result<()> {
    if key.len() > 1024 {
        return Err(s3err(S3ErrorCode::KeyTooLongError, "Your key is too long"));
    }
    if key.is_empty() {
        return Err(s3err(
            S3ErrorCode::InvalidArgument,
            "Object key must not be empty",
        ));
    }
    if key.contains('\0') {
        return Err(s3err(
            S3ErrorCode::InvalidArgument,
            "Object key must not contain NUL characters",
        ));
    }
    Ok(())
}

/// S3 bucket naming rules (the strict, current ones).
pub(crate) fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    if !(3..=63).contains(&b.len()) {
        return false;
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
    {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return false;
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return false;
    }
    if name.starts_with("xn--") || name.starts_with("sthree-") || name.ends_with("-s3alias") {
        return false;
    }
    true
}

#[async_trait]
impl s3s::S3 for Adapter {
    async fn list_buckets(
        &self,
        req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        bucket::list_buckets(self, req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<dto::CreateBucketInput>,
    ) -> S3Result<S3Response<dto::CreateBucketOutput>> {
        bucket::create_bucket(self, req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        bucket::head_bucket(self, req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<dto::DeleteBucketInput>,
    ) -> S3Result<S3Response<dto::DeleteBucketOutput>> {
        bucket::delete_bucket(self, req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<dto::GetBucketLocationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLocationOutput>> {
        bucket::get_bucket_location(self, req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        list::list_objects(self, req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        list::list_objects_v2(self, req).await
    }

    async fn list_object_versions(
        &self,
        req: S3Request<dto::ListObjectVersionsInput>,
    ) -> S3Result<S3Response<dto::ListObjectVersionsOutput>> {
        list::list_object_versions(self, req).await
    }

    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        object::put_object(self, req).await
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        object::get_object(self, req).await
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        object::head_object(self, req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        object::delete_object(self, req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        object::delete_objects(self, req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<dto::CopyObjectInput>,
    ) -> S3Result<S3Response<dto::CopyObjectOutput>> {
        object::copy_object(self, req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        multipart::create(self, req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        multipart::upload_part(self, req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<dto::UploadPartCopyInput>,
    ) -> S3Result<S3Response<dto::UploadPartCopyOutput>> {
        multipart::upload_part_copy(self, req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        multipart::complete(self, req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        multipart::abort(self, req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<dto::ListPartsInput>,
    ) -> S3Result<S3Response<dto::ListPartsOutput>> {
        multipart::list_parts(self, req).await
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<dto::GetBucketAclInput>,
    ) -> S3Result<S3Response<dto::GetBucketAclOutput>> {
        subresource::get_bucket_acl(self, req).await
    }

    async fn get_object_acl(
        &self,
        req: S3Request<dto::GetObjectAclInput>,
    ) -> S3Result<S3Response<dto::GetObjectAclOutput>> {
        subresource::get_object_acl(self, req).await
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<dto::GetBucketVersioningInput>,
    ) -> S3Result<S3Response<dto::GetBucketVersioningOutput>> {
        subresource::get_bucket_versioning(self, req).await
    }

    async fn get_bucket_request_payment(
        &self,
        req: S3Request<dto::GetBucketRequestPaymentInput>,
    ) -> S3Result<S3Response<dto::GetBucketRequestPaymentOutput>> {
        subresource::get_bucket_request_payment(self, req).await
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<dto::GetObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::GetObjectTaggingOutput>> {
        subresource::get_object_tagging(self, req).await
    }

    async fn get_bucket_policy(
        &self,
        req: S3Request<dto::GetBucketPolicyInput>,
    ) -> S3Result<S3Response<dto::GetBucketPolicyOutput>> {
        let b = req.input.bucket.clone();
        Err(
            subresource::not_configured(self, &req, &b, "NoSuchBucketPolicy", "bucket policy")
                .await,
        )
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<dto::GetBucketCorsInput>,
    ) -> S3Result<S3Response<dto::GetBucketCorsOutput>> {
        let b = req.input.bucket.clone();
        Err(subresource::not_configured(
            self,
            &req,
            &b,
            "NoSuchCORSConfiguration",
            "CORS configuration",
        )
        .await)
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<dto::GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<dto::GetBucketLifecycleConfigurationOutput>> {
        let b = req.input.bucket.clone();
        Err(subresource::not_configured(
            self,
            &req,
            &b,
            "NoSuchLifecycleConfiguration",
            "lifecycle configuration",
        )
        .await)
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<dto::GetBucketTaggingInput>,
    ) -> S3Result<S3Response<dto::GetBucketTaggingOutput>> {
        let b = req.input.bucket.clone();
        Err(subresource::not_configured(self, &req, &b, "NoSuchTagSet", "tag set").await)
    }

    async fn get_bucket_encryption(
        &self,
        req: S3Request<dto::GetBucketEncryptionInput>,
    ) -> S3Result<S3Response<dto::GetBucketEncryptionOutput>> {
        let b = req.input.bucket.clone();
        Err(subresource::not_configured(
            self,
            &req,
            &b,
            "ServerSideEncryptionConfigurationNotFoundError",
            "server side encryption configuration",
        )
        .await)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<dto::ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<dto::ListMultipartUploadsOutput>> {
        multipart::list_uploads(self, req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-bucket", "a.b.c", "b123", "0ab"] {
            assert!(valid_bucket_name(ok), "{ok}");
        }
        for bad in [
            "ab",
            "ABC",
            "a_b",
            "-ab",
            "ab-",
            "a..b",
            "a.-b",
            "192.168.1.1",
            "xn--ab",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert!(check_key("../x").is_ok());
        assert!(check_key(&"k".repeat(1024)).is_ok());
        assert_eq!(
            check_key(&"k".repeat(1025)).unwrap_err().code(),
            &S3ErrorCode::KeyTooLongError
        );
        assert_eq!(
            check_key("a\0b").unwrap_err().code(),
            &S3ErrorCode::InvalidArgument
        );
    }
}
