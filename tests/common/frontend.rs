//! One `strato serve` frontend of a shared deployment (tests/shared_*.rs):
//! started with the settings a test gives as environment variables, with
//! its banner kept and a client that does not retry, so a 503 reaches the
//! test as the frontend sent it.
#![allow(dead_code)]

use std::io::BufRead;
use std::process::Stdio;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::common::{Server, Strato};

/// Every frontend of a test gets the same keys: users are not in the
/// shared metadata (each frontend reads its own config or environment).
const ACCESS_KEY: &str = "STRTESTACCESSKEY0001";
const SECRET_KEY: &str = "test-secret-key-0123456789abcdefghijklmn";

/// A frontend and the lines of its banner.
pub struct Frontend {
    pub server: Server,
    pub banner: Vec<String>,
    stderr_path: std::path::PathBuf,
}

impl Frontend {
    /// `strato serve` on a loopback port of a new data directory, with
    /// `env` (STRATO_* settings) added; `engine` names the metadata engine
    /// for the test's own bookkeeping. Panics with its log if it does not
    /// start.
    pub fn start(engine: &'static str, env: &[(&str, String)]) -> Frontend {
        let strato = Strato::new(engine);
        std::fs::create_dir_all(strato.dir.path()).unwrap();
        let stderr_path = strato.dir.path().join("serve.stderr");
        let mut cmd = strato.cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("STRATO_LOG", "info")
            .env("STRATO_ACCESS_KEY", ACCESS_KEY)
            .env("STRATO_SECRET_KEY", SECRET_KEY)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting strato serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        // The banner ends with an empty line; bounded in case it changes.
        for _ in 0..40 {
            match lines.next() {
                Some(Ok(l)) if l.is_empty() => break,
                Some(Ok(l)) => banner.push(l),
                _ => break,
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let first = banner.first().cloned().unwrap_or_default();
        let Some(endpoint) = first.strip_prefix("strato serving S3 at ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "strato serve did not start: {first:?}\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        let endpoint = endpoint.to_string();
        let host = endpoint.trim_start_matches("http://").to_string();
        Frontend {
            server: Server {
                strato,
                child,
                endpoint,
                host,
                access_key: ACCESS_KEY.to_string(),
                secret_key: SECRET_KEY.to_string(),
            },
            banner,
            stderr_path,
        }
    }

    /// A client that does not retry.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let s = &self.server;
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&s.endpoint)
            .credentials_provider(Credentials::new(
                &s.access_key,
                &s.secret_key,
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}
