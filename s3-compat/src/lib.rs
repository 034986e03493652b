//! S3 protocol layer (see DESIGN.md): turns S3 HTTP requests into calls on
//! a [`Backend`]. Knows nothing about chunks or how objects are stored.
//!
//! Built on `s3s` for SigV4 (headers, presigned URLs, aws-chunked bodies),
//! routing and XML; every `s3s` type stays inside this crate. What S3
//! clients depend on beyond the wire format — conditional requests, Range
//! rules, checksum verification, listing rules, error documents — is ours.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn run(backend: Arc<dyn s3_compat::Backend>) {
//! use s3_compat::{S3Config, S3Service, StaticCredentials};
//! let creds = StaticCredentials::new().with_user("alice", "AKID", "SECRET");
//! let svc = S3Service::new(backend, Arc::new(creds), S3Config::default());
//! // In a hyper service_fn: `svc.handle(req).await` for every request the
//! // root does not route itself.
//! # let _ = svc;
//! # }
//! ```

mod adapter;
mod auth;
mod backend;
mod body;
mod checksum;
mod cond;
mod config;
mod error;
mod list;
mod metrics;
mod service;

pub use auth::{Credential, CredentialStore, StaticCredentials, User};
pub use backend::{
    Backend, BackendError, BodyError, BucketInfo, ByteStream, LateChecksums, ObjectAttrs,
    ObjectInfo, PartInfo, PutOptions, UploadInfo,
};
pub use config::S3Config;
pub use metrics::{MetricsSink, RequestRecord, S3Metrics};
pub use service::{BoxError, ExtraRoute, ResponseBody, S3Service, S3ServiceBuilder};
