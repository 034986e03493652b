//! The S3 service over the in-memory test backend, for trying real clients
//! (s3cmd, boto3, the AWS CLI) against the protocol layer alone:
//!
//! ```text
//! cargo run -p s3-compat --example mem_server -- 127.0.0.1:9100
//! ```
//!
//! Credentials: access key `AKIDALICE`, secret `alice-secret-key`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

#[path = "../tests/s3/mem.rs"]
#[allow(dead_code)]
mod mem;

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use s3_compat::{S3Config, S3Service, StaticCredentials};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".to_owned());
    let creds = StaticCredentials::new().with_user("alice", "AKIDALICE", "alice-secret-key");
    let svc = S3Service::new(
        Arc::new(mem::MemBackend::new()),
        Arc::new(creds),
        S3Config::default(),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let svc = svc.clone();
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
