//! `strato pull` (delta pull into a node-local cache) and `strato presign`,
//! plus the endpoint options every hypervisor-side command shares.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use strato::distribute::client::parse_s3_url;
use strato::distribute::{ChunkClient, Keys, PullOptions};
use strato::store::{Store, StoreConfig};

use super::Ctx;

/// How to reach a strato endpoint (its S3 port carries the chunk API).
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// Endpoint URL, e.g. http://repo:9000
    #[arg(long, env = "STRATO_ENDPOINT")]
    pub endpoint: String,
    /// Access key (default: STRATO_ACCESS_KEY, then AWS_ACCESS_KEY_ID)
    #[arg(long)]
    pub access_key: Option<String>,
    /// Secret key (default: STRATO_SECRET_KEY, then AWS_SECRET_ACCESS_KEY)
    #[arg(long)]
    pub secret_key: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .find(|v| !v.is_empty())
}

impl Remote {
    pub fn keys(&self) -> Result<Keys> {
        let access_key = self
            .access_key
            .clone()
            .or_else(|| env_first(&["STRATO_ACCESS_KEY", "AWS_ACCESS_KEY_ID"]))
            .context("no access key: use --access-key or STRATO_ACCESS_KEY")?;
        let secret_key = self
            .secret_key
            .clone()
            .or_else(|| env_first(&["STRATO_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"]))
            .context("no secret key: use --secret-key or STRATO_SECRET_KEY")?;
        Ok(Keys {
            access_key,
            secret_key,
        })
    }

    pub fn client(&self) -> Result<ChunkClient> {
        Ok(ChunkClient::new(
            &self.endpoint,
            self.keys()?,
            &self.region,
        )?)
    }
}

pub fn s3_url(s: &str) -> Result<(String, String)> {
    parse_s3_url(s).with_context(|| format!("expected s3://BUCKET/KEY, got {s:?}"))
}

/// The node-local cache: a strato store of its own.
pub fn open_cache(dir: &std::path::Path) -> Result<Store> {
    Store::open(dir, StoreConfig::default())
        .with_context(|| format!("opening the cache store in {}", dir.display()))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?)
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// s3://BUCKET/KEY
    pub image: String,
    #[command(flatten)]
    pub remote: Remote,
    /// Node-local chunk cache (a strato store; created if absent)
    #[arg(long)]
    pub cache: PathBuf,
    /// Write the image here (sparse); without it the image only fills the cache
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Chunks fetched in parallel
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
}

pub fn pull(ctx: &Ctx, a: PullArgs) -> Result<ExitCode> {
    let (bucket, key) = s3_url(&a.image)?;
    let client = a.remote.client()?;
    let cache = open_cache(&a.cache)?;
    let rt = runtime()?;
    let opts = PullOptions {
        parallel: a.parallel,
    };
    let report = rt
        .block_on(strato::distribute::pull(
            &client,
            &cache,
            &bucket,
            &key,
            a.out.as_deref(),
            &opts,
        ))
        .with_context(|| format!("pulling s3://{bucket}/{key}"))?;
    if ctx.json {
        ctx.print_json(&report)?;
    } else {
        let pct = if report.size > 0 {
            100.0 * report.fetched_bytes as f64 / report.size as f64
        } else {
            0.0
        };
        println!(
            "pulled s3://{bucket}/{key}: {} bytes, fetched {} bytes ({pct:.1} %) in {} of {} chunks ({} already cached) in {} ms",
            report.size,
            report.fetched_bytes,
            report.fetched_chunks,
            report.unique_chunks,
            report.cached_chunks,
            report.elapsed_ms
        );
        if let Some(o) = &report.out {
            println!("wrote {}", o.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct PresignArgs {
    /// s3://BUCKET/KEY
    pub image: String,
    #[command(flatten)]
    pub remote: Remote,
    /// Validity in seconds (S3 allows at most 7 days)
    #[arg(long, default_value_t = 3600)]
    pub expires: u64,
}

/// Print a presigned GET URL, e.g. for QEMU's curl driver as a backing file.
pub fn presign(_ctx: &Ctx, a: PresignArgs) -> Result<ExitCode> {
    let (bucket, key) = s3_url(&a.image)?;
    let client = a.remote.client()?;
    println!(
        "{}",
        client.presign_get(&bucket, &key, Duration::from_secs(a.expires))?
    );
    Ok(ExitCode::SUCCESS)
}
