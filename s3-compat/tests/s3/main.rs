//! Integration tests: the real service on 127.0.0.1:0 over an in-memory
//! backend, driven by the real `aws-sdk-s3` client and plain HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod endpoint;
mod mem;

mod adapter;
mod buckets;
mod errors;
mod list;
mod multipart;
mod objects;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use s3_compat::{S3Config, S3Metrics, S3Service, StaticCredentials};

pub use endpoint::*;
pub use mem::MemBackend;

pub const AK: &str = "AKIDALICE";
pub const SK: &str = "alice-secret-key";
pub const AK2: &str = "AKIDBOB";
pub const SK2: &str = "bob-secret-key";

pub struct Server {
    pub addr: SocketAddr,
    pub backend: Arc<MemBackend>,
    pub metrics: Arc<S3Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(S3Config::default()).await
    }

    pub async fn start_with(config: S3Config) -> Self {
        Self::start_full(config, None).await
    }

    pub async fn start_full(
        config: S3Config,
        route: Option<Arc<dyn s3_compat::ExtraRoute>>,
    ) -> Self {
        let backend = Arc::new(MemBackend::new());
        let creds = StaticCredentials::new()
            .with_user("alice", AK, SK)
            .with_user("bob", AK2, SK2);
        let metrics = Arc::new(S3Metrics::new());
        let mut builder =
            S3Service::builder(backend.clone(), Arc::new(creds), config).metrics(metrics.clone());
        if let Some(r) = route {
            builder = builder.extra_route(r);
        }
        let svc = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server {
            addr,
            backend,
            metrics,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_with(AK, SK)
    }

    pub fn client_with(&self, ak: &str, sk: &str) -> aws_sdk_s3::Client {
        client_for(&self.url(), ak, sk)
    }

    /// Objects in `bucket`, as the backend holds them.
    pub async fn object_count(&self, bucket: &str) -> usize {
        self.backend.object_count(bucket)
    }

    /// An object's bytes, as the backend holds them.
    pub async fn object_data(&self, bucket: &str, key: &str) -> Option<bytes::Bytes> {
        self.backend.object_data(bucket, key)
    }
}
