//! `strato chain-agent` (a node of a broadcast chain) and `strato propagate`
//! (the repository side), over `chain-broadcast` and the store glue in
//! `distribute::chain`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use chain_broadcast::{
    propagate_chains, resolve_nodes, split_chains, ChunkSource, Options, Progress, Report,
    ServeOptions, SinkFactory,
};
use strato::distribute::chain::{
    transfer_name, ChainSource, FileNameSinkFactory, StoreSinkFactory,
};

use super::common::{open_cache, ImageSource};
use super::{local_owner, split_path, Ctx};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("sink").required(true).args(["store", "out_dir"])))]
pub struct AgentArgs {
    /// Address to listen on. The chain protocol has no authentication:
    /// bind it to a trusted (cluster-internal) interface only.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Keep received images as objects of this strato store (BUCKET/KEY as
    /// sent); chunks it already holds are not sent again
    #[arg(long)]
    store: Option<PathBuf>,
    /// Write received images as OUT_DIR/<last component of KEY>
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Transfers served at once
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
}

pub fn agent(ctx: &Ctx, a: AgentArgs) -> Result<ExitCode> {
    let factory: Arc<dyn SinkFactory> = match (&a.store, &a.out_dir) {
        (Some(dir), _) => Arc::new(StoreSinkFactory::new(
            open_cache(dir)?,
            local_owner(&ctx.file),
        )),
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Arc::new(FileNameSinkFactory::new(dir.clone()))
        }
        (None, None) => anyhow::bail!("give --store DIR or --out-dir DIR"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strato-chain")
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let addr = listener.local_addr()?;
        // Scripts and tests read the bound port (with --listen HOST:0) here.
        println!("chain-agent listening on {addr}");
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "the chain protocol is unauthenticated: {addr} must be a trusted network"
            );
        }
        let opts = ServeOptions {
            max_sessions: a.max_sessions.max(1),
            ..ServeOptions::default()
        };
        let shutdown = strato::server::shutdown_signal();
        chain_broadcast::serve_until(listener, factory, opts, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct PropagateArgs {
    /// BUCKET/KEY in the local store (--data-dir), or s3://BUCKET/KEY with --endpoint
    image: String,
    /// Nodes in chain order: H1:P,H2:P,...
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    #[command(flatten)]
    source: ImageSource,
    /// Independent chains fed in parallel by the sender (a tree of chains)
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Seconds allowed for a node to connect
    #[arg(long, default_value_t = 3)]
    connect_timeout: u64,
    /// Seconds without progress before a hop is given up
    #[arg(long, default_value_t = 20)]
    io_timeout: u64,
}

pub fn propagate(ctx: &Ctx, a: PropagateArgs) -> Result<ExitCode> {
    let (bucket, key) = split_path(&a.image)?;
    let (bucket, key) = (bucket.to_string(), key.to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strato-propagate")
        .build()?;
    let progress = Progress::new();
    let opts = Options {
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        io_timeout: Duration::from_secs(a.io_timeout.max(1)),
        progress: Some(Arc::clone(&progress)),
        ..Options::default()
    };
    let report: Report = rt.block_on(async {
        let nodes = resolve_nodes(&a.nodes).await?;
        let from = a.source.open(ctx, &a.image)?;
        let where_ = a.source.endpoint.as_deref().unwrap_or("the local store");
        let (src, manifest, _) = ChainSource::open(from, &bucket, &key)
            .await
            .with_context(|| format!("manifest of {bucket}/{key} at {where_}"))?;
        let source: Arc<dyn ChunkSource> = src;
        let pb = super::progress_bar(ctx, manifest.size(), &format!("{bucket}/{key}"));
        let ticker = {
            let pb = pb.clone();
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                loop {
                    let (sent, planned) = progress.snapshot();
                    if planned > 0 {
                        pb.set_length(planned);
                    }
                    pb.set_position(sent);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let chains = split_chains(&nodes, a.fanout.max(1));
        let name = transfer_name(&bucket, &key);
        let r = propagate_chains(source, &name, Arc::new(manifest), &chains, &opts).await;
        ticker.abort();
        pb.finish_and_clear();
        anyhow::Ok(r?)
    })?;
    ctx.emit(&report, || {
        println!(
            "{bucket}/{key}: {} bytes to {} node(s) in {:.2}s, repository sent {} bytes",
            report.object_size,
            report.nodes.len(),
            report.elapsed.as_secs_f64(),
            report.bytes_sent
        );
        println!(
            "{:<24} {:<6} {:>14} {:>14} {:>9}  reason",
            "node", "result", "received", "written", "time"
        );
        for n in &report.nodes {
            println!(
                "{:<24} {:<6} {:>14} {:>14} {:>8.2}s  {}",
                n.addr.to_string(),
                if n.ok { "ok" } else { "FAILED" },
                n.bytes_received,
                n.bytes_written,
                n.elapsed.as_secs_f64(),
                n.reason.as_deref().unwrap_or("")
            );
        }
    })?;
    let failed: Vec<String> = report.failed().map(|n| n.addr.to_string()).collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: propagation failed on {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
