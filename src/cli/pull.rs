//! `strato pull` (delta pull into a node-local cache) and `strato presign`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::common::{pull_image, s3_url, Remote, RemoteCache};
use super::Ctx;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// s3://BUCKET/KEY
    pub image: String,
    #[command(flatten)]
    pub from: RemoteCache,
    /// Write the image here (sparse); without it the image only fills the cache
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Chunks fetched in parallel
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
}

pub fn pull(ctx: &Ctx, a: PullArgs) -> Result<ExitCode> {
    let (bucket, key) = s3_url(&a.image)?;
    let (client, cache) = a.from.open()?;
    let report = pull_image(
        &client,
        &cache,
        (&bucket, &key),
        a.out.as_deref(),
        a.parallel,
    )?;
    ctx.emit(&report, || {
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
    })?;
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
