//! `strato swarm-agent`: one node of a swarm for s3://BUCKET/KEY, with the
//! repository as tracker (`distribute::swarm`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use strato::distribute::swarm::{self, NodeReport, Options, Progress, Target};

use super::common::{open_cache, s3_url, Remote};
use super::Ctx;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("sink").required(true).args(["store", "out_dir"])))]
pub struct SwarmAgentArgs {
    /// s3://BUCKET/KEY
    image: String,
    #[command(flatten)]
    remote: Remote,
    /// Keep the image as an object of this node-local strato store (chunks
    /// it already holds, e.g. of an older version, are not fetched)
    #[arg(long)]
    store: Option<PathBuf>,
    /// Write the image as OUT_DIR/<last component of KEY>
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Where this node serves chunks to its peers (peers authenticate with
    /// the swarm's secret from the tracker)
    #[arg(long, default_value = "127.0.0.1:7600")]
    listen: SocketAddr,
    /// IP:PORT peers reach this node at (default: the --listen address)
    #[arg(long, value_name = "IP:PORT")]
    advertise: Option<SocketAddr>,
    /// Seconds to keep serving peers after the image is complete
    #[arg(long, default_value_t = 10)]
    seed_secs: u64,
    /// Requests in flight per peer
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Chunk requests in flight to the repository
    #[arg(long, default_value_t = 4)]
    repository_window: usize,
    /// Peers downloaded from at once
    #[arg(long, default_value_t = 8)]
    max_peers: usize,
    /// Give up when not complete after this many seconds
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
}

pub fn agent(ctx: &Ctx, a: SwarmAgentArgs) -> Result<ExitCode> {
    let (bucket, key) = s3_url(&a.image)?;
    let client = a.remote.client()?;
    let target = match (&a.store, &a.out_dir) {
        (Some(dir), _) => Target::Store(open_cache(dir)?),
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            Target::OutDir(dir.clone())
        }
        (None, None) => anyhow::bail!("give --store DIR or --out-dir DIR"),
    };
    let rt = super::common::runtime()?;
    let report: NodeReport = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let bound = listener.local_addr()?;
        let advertise = a.advertise.unwrap_or(bound);
        anyhow::ensure!(
            !advertise.ip().is_unspecified(),
            "listening on {bound}: give --advertise IP:PORT, the address peers reach this node at"
        );
        // Scripts and tests read the bound port (with --listen HOST:0) here.
        eprintln!("swarm-agent serving peers on {bound} as {advertise}");
        let progress = Arc::new(Progress::default());
        let opts = Options {
            advertise: advertise.to_string(),
            seed: Duration::from_secs(a.seed_secs),
            window: a.window.clamp(1, 256),
            repository_window: a.repository_window.clamp(1, 64),
            max_peers: a.max_peers.clamp(1, 64),
            timeout: Duration::from_secs(a.timeout.max(1)),
            progress: Some(Arc::clone(&progress)),
            ..Options::default()
        };
        let pb = super::progress_bar(ctx, 0, &format!("{bucket}/{key}"));
        let ticker = {
            let pb = pb.clone();
            tokio::spawn(async move {
                loop {
                    pb.set_length(progress.total.load(Ordering::Relaxed));
                    pb.set_position(progress.done.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let report = swarm::run(client.clone(), &bucket, &key, target, listener, opts).await;
        ticker.abort();
        pb.finish_and_clear();
        // The node's outcome for the repository's records (best effort).
        let outcome = chunk_api_report(&report);
        if let Err(e) = client.report(&bucket, &key, &outcome).await {
            tracing::warn!("could not report to the repository: {e}");
        }
        anyhow::Ok(report)
    })?;
    ctx.emit(&report, || {
        println!(
            "{}/{} on {}: {} — {} bytes, {} from peers, {} from the repository, {} already held, \
             {} served, {:.2}s",
            report.bucket,
            report.key,
            report.node,
            if report.ok { "ok" } else { "FAILED" },
            report.size,
            report.bytes_from_peers,
            report.bytes_from_repository,
            report.bytes_already_held,
            report.bytes_served,
            report.seconds
        );
        if let Some(r) = &report.reason {
            println!("reason: {r}");
        }
        if let Some(i) = &report.image {
            println!("image: {i}");
        }
        for d in &report.peers_dropped {
            println!("dropped peer {}: {}", d.peer, d.reason);
        }
    })?;
    if report.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: swarm-agent failed: {}",
            report.reason.as_deref().unwrap_or("unknown")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// This node's outcome as the repository's report route takes it.
fn chunk_api_report(r: &NodeReport) -> strato::chunk_api::SessionReport {
    strato::chunk_api::SessionReport {
        kind: "swarm".into(),
        nodes: vec![strato::chunk_api::NodeOutcome {
            node: r.node.clone(),
            ok: r.ok,
            reason: r.reason.clone(),
            bytes_received: r.bytes_from_peers + r.bytes_from_repository,
            seconds: r.seconds,
        }],
        bytes_sent: r.bytes_from_repository,
        object_size: r.size,
        seconds: r.seconds,
    }
}

/// Seconds between the watcher's looks at the tracker.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// `strato propagate --method swarm`: the nodes' `swarm-agent`s pull by
/// themselves, so this opens the swarm at the tracker (the repository) and
/// watches it until every listed node is done, has left or aged out
/// without completing, or --timeout passes; then prints the report the
/// chain prints. A node's outcome is what it last announced; its own
/// report (`swarm-agent --json`) also says whether its copy verified.
pub fn propagate(ctx: &Ctx, a: super::chain::PropagateArgs) -> Result<ExitCode> {
    use chain_broadcast::{NodeReport as Node, Report};
    use strato::chunk_api::swarm::{Announce, MAX_PEERS_RETURNED, SWARM_VERSION};

    let (bucket, key) = super::split_path(&a.image)?;
    let Some(ep) = &a.source.endpoint else {
        anyhow::bail!("propagate --method swarm needs --endpoint: the repository is the tracker");
    };
    let client = a.source.creds.client(ep)?;
    let mut nodes: Vec<SocketAddr> = Vec::with_capacity(a.nodes.len());
    for n in &a.nodes {
        let addr: SocketAddr = n
            .parse()
            .with_context(|| format!("node {n:?}: give the IP:PORT its swarm-agent advertises"))?;
        anyhow::ensure!(!nodes.contains(&addr), "node {addr} is listed twice");
        nodes.push(addr);
    }
    anyhow::ensure!(
        nodes.len() <= MAX_PEERS_RETURNED,
        "propagate --method swarm watches at most {MAX_PEERS_RETURNED} nodes"
    );
    let timeout = Duration::from_secs(a.timeout.max(1));
    let rt = super::common::runtime()?;
    let report: Report = rt.block_on(async {
        let started = std::time::Instant::now();
        let mut watch = Announce {
            version: SWARM_VERSION,
            watch: true,
            ..Announce::default()
        };
        let mut size = 0;
        let mut outcome: Vec<Option<Node>> = nodes.iter().map(|_| None).collect();
        let mut seen = vec![false; nodes.len()];
        // The most each node announced it had from the repository.
        let mut repo = vec![0u64; nodes.len()];
        let pb = super::progress_bar(ctx, nodes.len() as u64, &format!("{bucket}/{key} nodes"));
        loop {
            let reply = client
                .swarm_announce(bucket, key, &watch)
                .await
                .with_context(|| format!("watching the swarm of {bucket}/{key} at {ep}"))?;
            if let Some(doc) = &reply.manifest {
                size = doc.size;
            }
            watch.manifest_digest = Some(reply.manifest_digest.clone());
            let elapsed = started.elapsed();
            for (i, addr) in nodes.iter().enumerate() {
                let Some(p) = reply.peers.iter().find(|p| p.peer == addr.to_string()) else {
                    continue;
                };
                repo[i] = repo[i].max(p.bytes_from_repository);
                if outcome[i].is_some() {
                    continue;
                }
                seen[i] = true;
                let received = p.bytes_from_peers.saturating_add(p.bytes_from_repository);
                if p.done {
                    outcome[i] = Some(Node {
                        addr: *addr,
                        ok: true,
                        reason: None,
                        bytes_received: received,
                        bytes_written: size,
                        elapsed,
                    });
                } else if p.left {
                    let mut n = Node::failed(
                        *addr,
                        "left the swarm before completing (killed, or it gave up: see its report)",
                    );
                    n.bytes_received = received;
                    n.elapsed = elapsed;
                    outcome[i] = Some(n);
                }
            }
            pb.set_position(outcome.iter().filter(|o| o.is_some()).count() as u64);
            let finished = outcome.iter().all(Option::is_some);
            if finished || started.elapsed() >= timeout {
                pb.finish_and_clear();
                let nodes: Vec<Node> = outcome
                    .into_iter()
                    .zip(&nodes)
                    .zip(&seen)
                    .map(|((o, addr), seen)| {
                        o.unwrap_or_else(|| {
                            Node::failed(
                                *addr,
                                if *seen {
                                    format!("not complete after {}s", timeout.as_secs())
                                } else {
                                    format!(
                                        "never joined the swarm in {}s (is its swarm-agent \
                                         running and advertising this address?)",
                                        timeout.as_secs()
                                    )
                                },
                            )
                        })
                    })
                    .collect();
                return anyhow::Ok(Report {
                    transfer_id: 0,
                    nodes,
                    bytes_sent: repo.iter().sum(),
                    object_size: size,
                    forged_control_frames: 0,
                    elapsed: started.elapsed(),
                });
            }
            tokio::time::sleep(WATCH_EVERY.min(timeout.saturating_sub(started.elapsed()))).await;
        }
    })?;
    super::chain::print_report(ctx, bucket, key, &report)
}
