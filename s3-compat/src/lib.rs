//! S3 protocol layer (see DESIGN.md): turns S3 HTTP requests into calls on
//! a [`Backend`]. Knows nothing about chunks or how objects are stored.
//!
//! Built on `s3s` for SigV4 (headers, presigned URLs, aws-chunked bodies),
//! routing and XML; every `s3s` type stays inside this crate. What S3
//! clients depend on beyond the wire format — conditional requests, Range
//! rules, checksum verification, listing rules, error documents — is ours.
//!
//! # Mounting
//!
//! [`S3Service::handle`] serves one `http::Request` and never fails (errors
//! are S3 XML documents); [`S3Service`] is also a `hyper::service::Service`.
//! The root routes what it serves itself (e.g. an unauthenticated
//! `/metrics`) and hands everything else to `handle`:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # async fn run(backend: Arc<dyn s3_compat::Backend>) {
//! use s3_compat::{S3Config, S3Metrics, S3Service, StaticCredentials};
//! let creds = StaticCredentials::new().with_user("alice", "AKID", "SECRET");
//! let metrics = Arc::new(S3Metrics::new());
//! let svc = S3Service::builder(backend, Arc::new(creds), S3Config::default())
//!     .metrics(metrics.clone())
//!     .build();
//! // In a hyper service_fn: `svc.handle(req).await`;
//! // for /metrics: `metrics.render_prometheus()`.
//! # let _ = svc;
//! # }
//! ```
//!
//! # Authenticated routes of your own
//!
//! Routes registered with [`S3ServiceBuilder::extra_route`] are verified
//! exactly like S3 requests (header SigV4, presigned URLs, aws-chunked
//! bodies, clock skew) before [`ExtraRoute::call`] receives the user and a
//! verified body stream. Their paths must look like `/<bucket-name>/...`.
//!
//! # Uploads
//!
//! Upload bodies reach the backend as a [`ByteStream`] that enforces the
//! declared length and the size limit and verifies `x-amz-checksum-*`; any
//! failure is an `Err` item (at the latest at end of stream), after which
//! the backend must store nothing. Checksums sent as aws-chunked trailers
//! are known only at end of stream: see [`PutOptions::late_checksums`].

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
mod rfc2047;
mod service;
mod spool;

pub use auth::{Credential, CredentialStore, StaticCredentials, User};
pub use backend::{
    Backend, BackendError, BodyError, BucketInfo, ByteStream, LateChecksums, ObjectAttrs,
    ObjectInfo, ObjectPartInfo, PartInfo, PutOptions, UploadInfo,
};
pub use config::S3Config;
pub use metrics::{MetricsSink, RequestRecord, S3Metrics};
pub use service::{BoxError, ExtraRoute, ResponseBody, S3Service, S3ServiceBuilder};
