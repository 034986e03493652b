//! The S3 suite of `s3-compat/tests/s3/` (written against an endpoint: SDK
//! calls and plain or hand-signed HTTP), run here against the real
//! `strato serve` over the real store. The same modules run in the
//! s3-compat crate against its in-memory backend; what only that backend
//! can show (the attributes it is handed, its metrics, other
//! configurations) stays there, in `adapter.rs`.
//!
//! Two users, alice and bob, come from the server's config file, so
//! ownership is checked between two ordinary users (the admin key of the
//! environment is not used by the suite).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

#[path = "../s3-compat/tests/s3/endpoint.rs"]
mod endpoint;

#[path = "../s3-compat/tests/s3/buckets.rs"]
mod buckets;
#[path = "../s3-compat/tests/s3/errors.rs"]
mod errors;
#[path = "../s3-compat/tests/s3/list.rs"]
mod list;
#[path = "../s3-compat/tests/s3/multipart.rs"]
mod multipart;
#[path = "../s3-compat/tests/s3/objects.rs"]
mod objects;

use std::net::SocketAddr;

pub use endpoint::*;

pub const AK: &str = "ALICEACCESSKEY000001";
pub const SK: &str = "alice-secret-key-0123456789";
pub const AK2: &str = "BOBACCESSKEY00000001";
pub const SK2: &str = "bob-secret-key-0123456789";

pub struct Server {
    pub addr: SocketAddr,
    serve: common::Server,
}

impl Server {
    pub async fn start() -> Server {
        let strato = common::Strato::new("redb");
        let cfg = strato.dir.path().join("strato.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[users]]\nname = \"alice\"\naccess_key = \"{AK}\"\nsecret_key = \"{SK}\"\n\n\
                 [[users]]\nname = \"bob\"\naccess_key = \"{AK2}\"\nsecret_key = \"{SK2}\"\n"
            ),
        )
        .unwrap();
        let cfg = cfg.to_str().unwrap().to_string();
        // Starting the process blocks until it prints its endpoint.
        let serve = tokio::task::spawn_blocking(move || {
            common::Server::start_with(strato, &[("STRATO_CONFIG", cfg.as_str())])
        })
        .await
        .unwrap();
        let addr = serve.host.parse().unwrap();
        Server { addr, serve }
    }

    pub fn url(&self) -> String {
        self.serve.endpoint.clone()
    }

    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_with(AK, SK)
    }

    pub fn client_with(&self, ak: &str, sk: &str) -> aws_sdk_s3::Client {
        client_for(&self.url(), ak, sk)
    }

    /// Objects in `bucket`, listed through the endpoint as its owner
    /// (alice or bob).
    pub async fn object_count(&self, bucket: &str) -> usize {
        for (ak, sk) in [(AK, SK), (AK2, SK2)] {
            let c = self.client_with(ak, sk);
            let mut count = 0;
            let mut token: Option<String> = None;
            let mut denied = false;
            for _ in 0..10_000 {
                match c
                    .list_objects_v2()
                    .bucket(bucket)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                {
                    Ok(page) => {
                        count += page.contents().len();
                        token = page.next_continuation_token().map(str::to_owned);
                        if token.is_none() {
                            return count;
                        }
                    }
                    Err(e) if code(&e) == "AccessDenied" => {
                        denied = true;
                        break;
                    }
                    Err(e) => panic!("listing {bucket}: {e:?}"),
                }
            }
            assert!(denied, "listing {bucket} did not end");
        }
        panic!("neither alice nor bob may list {bucket}")
    }

    /// An object's bytes, read through the endpoint as its owner; `None`
    /// if there is no such object.
    pub async fn object_data(&self, bucket: &str, key: &str) -> Option<bytes::Bytes> {
        for (ak, sk) in [(AK, SK), (AK2, SK2)] {
            match self
                .client_with(ak, sk)
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
            {
                Ok(out) => return Some(out.body.collect().await.unwrap().into_bytes()),
                Err(e) if code(&e) == "NoSuchKey" => return None,
                Err(e) if code(&e) == "AccessDenied" => continue,
                Err(e) => panic!("reading {bucket}/{key}: {e:?}"),
            }
        }
        panic!("neither alice nor bob may read {bucket}/{key}")
    }
}
