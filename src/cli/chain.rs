//! `strato chain-agent` (a node of a broadcast chain) and `strato propagate`
//! (the repository side), over `chain-broadcast` and the store glue in
//! `distribute::chain`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use chain_broadcast::{
    chain_manifest_digest, propagate_chains, resolve_nodes, split_chains, ChunkSource, NodeTrust,
    Options, Progress, Report, ServeOptions, SessionAuth, SinkFactory,
};
use strato::distribute::chain::{
    transfer_name, ChainSource, FileNameSinkFactory, StoreSinkFactory,
};

use super::common::{open_cache, ImageSource};
use super::{local_owner, split_path, Ctx};

/// Which repository a receiver (chain agent, multicast receiver) accepts
/// images from.
#[derive(Args, Debug, Clone)]
pub struct TrustArgs {
    /// Accept only sessions whose ticket is signed by this repository key
    /// (the line `strato trust-key` prints); repeatable
    #[arg(long = "trust-key", value_name = "KEY")]
    pub trust_key: Vec<String>,
    /// Repository keys from a file, one per line (`#` comments allowed)
    #[arg(long, value_name = "FILE")]
    pub trust_key_file: Vec<PathBuf>,
    /// Without trust keys, listen on a non-loopback address anyway and
    /// accept unsigned sessions: any host that reaches the port can then
    /// write images here
    #[arg(long)]
    pub insecure: bool,
}

impl TrustArgs {
    /// The keys to check sessions against; `None` (unsigned sessions
    /// accepted) only on loopback or with `--insecure`, said loudly.
    /// `bind`: where the agent listens, or the peer it takes sessions from.
    pub fn load(&self, what: &str, bind: IpAddr) -> Result<Option<strato_trust::TrustedKeys>> {
        let mut texts = self.trust_key.clone();
        for f in &self.trust_key_file {
            texts.push(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading trust keys from {}", f.display()))?,
            );
        }
        if !texts.is_empty() {
            let keys = strato_trust::TrustedKeys::from_texts(texts.iter().map(String::as_str))
                .context("trust keys")?;
            return Ok(Some(keys));
        }
        if bind.is_loopback() {
            return Ok(None);
        }
        if self.insecure {
            eprintln!(
                "WARNING: {what} ({bind}) with --insecure and no --trust-key: it accepts \
                 UNSIGNED sessions, so any host that can reach it can make it store any image"
            );
            return Ok(None);
        }
        anyhow::bail!(
            "{what} ({bind}) without --trust-key: it would accept images from anyone who can \
             reach it; give --trust-key KEY (printed by `strato trust-key` on the repository) \
             or --trust-key-file FILE, or --insecure to accept unsigned sessions anyway"
        )
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("sink").required(true).args(["store", "out_dir"])))]
pub struct AgentArgs {
    /// Address to listen on. Off loopback it needs --trust-key (or --insecure)
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    #[command(flatten)]
    trust: TrustArgs,
    /// HOST:PORT this node is named by in session tickets, besides the
    /// address a connection reached it at (behind NAT or a name); repeatable
    #[arg(long, value_name = "HOST:PORT")]
    node_name: Vec<String>,
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
    let keys = a.trust.load("chain-agent", a.listen.ip())?;
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
        match &keys {
            Some(k) => println!(
                "chain-agent accepts only sessions signed by {} trusted key(s)",
                k.keys().len()
            ),
            None => tracing::warn!("chain-agent accepts unsigned sessions on {addr}"),
        }
        let opts = ServeOptions {
            max_sessions: a.max_sessions.max(1),
            trust: keys.map(|keys| {
                Arc::new(NodeTrust {
                    keys,
                    names: a.node_name.clone(),
                })
            }),
            ..ServeOptions::default()
        };
        let shutdown = strato::server::shutdown_signal();
        chain_broadcast::serve_until(listener, factory, opts, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How `propagate` moves the image to the nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Push through a chain of `chain-agent`s (the repository sends one copy)
    Chain,
    /// Watch `swarm-agent`s pull from each other and the repository (the
    /// repository is the tracker; needs --endpoint)
    Swarm,
    /// IP multicast: not through propagate yet; use `strato mcast send`
    Mcast,
}

#[derive(Args, Debug)]
pub struct PropagateArgs {
    /// BUCKET/KEY in the local store (--data-dir), or s3://BUCKET/KEY with --endpoint
    pub(super) image: String,
    /// Nodes: in chain order (chain), or the IP:PORT each swarm-agent
    /// advertises (swarm): H1:P,H2:P,...
    #[arg(long, value_delimiter = ',', required = true)]
    pub(super) nodes: Vec<String>,
    /// chain: push through chain-agents; swarm: swarm-agents pull and this
    /// waits for every listed node's outcome at the tracker
    #[arg(long, value_enum, default_value = "chain")]
    method: Method,
    /// swarm: seconds to wait for every node to complete
    #[arg(long, default_value_t = 1800)]
    pub(super) timeout: u64,
    #[command(flatten)]
    pub(super) source: ImageSource,
    /// Independent chains fed in parallel by the sender (a tree of chains)
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Seconds allowed for a node to connect
    #[arg(long, default_value_t = 3)]
    connect_timeout: u64,
    /// Seconds without progress before a hop is given up
    #[arg(long, default_value_t = 20)]
    io_timeout: u64,
    /// Seconds the session ticket is valid (nodes refuse it afterwards, a
    /// bypass reconnection included)
    #[arg(long, default_value_t = chunk_api::DEFAULT_TICKET_SECS)]
    ticket_lifetime: u64,
    /// Send an unsigned session (only nodes without --trust-key accept it)
    #[arg(long)]
    unsigned: bool,
}

/// The session ticket for `nodes`: from the repository's chunk API with
/// `--endpoint`, or signed here with the local repository's key. Also
/// returns the source and the manifest the ticket was signed over.
async fn signed_session(
    ctx: &Ctx,
    a: &PropagateArgs,
    bucket: &str,
    key: &str,
    nodes: &[SocketAddr],
) -> Result<(
    Arc<dyn chunk_api::ChunkSource>,
    chunk_api::ManifestDoc,
    SessionAuth,
)> {
    let audience: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    match &a.source.endpoint {
        Some(ep) => {
            let client = a.source.creds.client(ep)?;
            let req = chunk_api::TicketRequest {
                nodes: Some(audience),
                group: None,
                lifetime_secs: Some(a.ticket_lifetime),
            };
            let grant = client
                .ticket(bucket, key, &req)
                .await
                .with_context(|| format!("session ticket for {bucket}/{key} from {ep}"))?;
            let auth = strato::distribute::session_from_grant(&grant)
                .context("the repository's session ticket")?;
            Ok((Arc::new(client), grant.manifest, auth))
        }
        None => {
            let store = ctx.open_store()?;
            let doc = chunk_api::ChunkSource::manifest(&store, bucket, key)
                .await
                .with_context(|| format!("manifest of {bucket}/{key} in the local store"))?;
            let auth = super::serve::sign_local_session(
                &ctx.data_dir,
                &doc,
                strato::distribute::Audience::Nodes(audience),
                a.ticket_lifetime,
            )?;
            Ok((Arc::new(store), doc, auth))
        }
    }
}

/// The chain's outcome as the repository's console shows it.
fn session_report(r: &Report) -> chunk_api::SessionReport {
    chunk_api::SessionReport {
        kind: "chain".into(),
        nodes: r
            .nodes
            .iter()
            .map(|n| chunk_api::NodeOutcome {
                node: n.addr.to_string(),
                ok: n.ok,
                reason: n.reason.clone(),
                bytes_received: n.bytes_received,
                seconds: n.elapsed.as_secs_f64(),
            })
            .collect(),
        bytes_sent: r.bytes_sent,
        object_size: r.object_size,
        seconds: r.elapsed.as_secs_f64(),
    }
}

pub fn propagate(ctx: &Ctx, a: PropagateArgs) -> Result<ExitCode> {
    match a.method {
        Method::Chain => {}
        Method::Swarm => return super::swarm::propagate(ctx, a),
        Method::Mcast => anyhow::bail!(
            "propagate --method mcast is not implemented: use `strato mcast send` (its report \
             names every receiver too)"
        ),
    }
    let (bucket, key) = split_path(&a.image)?;
    let (bucket, key) = (bucket.to_string(), key.to_string());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strato-propagate")
        .build()?;
    let progress = Progress::new();
    let mut opts = Options {
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        io_timeout: Duration::from_secs(a.io_timeout.max(1)),
        progress: Some(Arc::clone(&progress)),
        ..Options::default()
    };
    let report: Report = rt.block_on(async {
        let nodes = resolve_nodes(&a.nodes).await?;
        let (src, manifest) = if a.unsigned {
            let from = a.source.open(ctx, &a.image)?;
            let where_ = a.source.endpoint.as_deref().unwrap_or("the local store");
            let (src, manifest, _) = ChainSource::open(from, &bucket, &key)
                .await
                .with_context(|| format!("manifest of {bucket}/{key} at {where_}"))?;
            (src, manifest)
        } else {
            let (from, doc, auth) = signed_session(ctx, &a, &bucket, &key, &nodes).await?;
            let (src, manifest) = ChainSource::from_doc(from, &doc);
            // Both ends must cut zero runs alike, or every node refuses.
            anyhow::ensure!(
                chain_manifest_digest(&manifest) == auth.ticket().ticket.manifest_digest,
                "the session ticket's manifest digest does not match {bucket}/{key}'s manifest"
            );
            opts.session = Some(auth);
            (src, manifest)
        };
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
        let r = r?;
        a.source.report(&bucket, &key, &session_report(&r)).await;
        anyhow::Ok(r)
    })?;
    print_report(ctx, &bucket, &key, &report)
}

/// The report every `propagate` method prints (JSON with --json), and the
/// exit code: failure when any node failed.
pub(super) fn print_report(
    ctx: &Ctx,
    bucket: &str,
    key: &str,
    report: &Report,
) -> Result<ExitCode> {
    ctx.emit(report, || {
        println!(
            "{bucket}/{key}: {} bytes to {} node(s) in {:.2}s, repository sent {} bytes",
            report.object_size,
            report.nodes.len(),
            report.elapsed.as_secs_f64(),
            report.bytes_sent
        );
        if report.forged_control_frames > 0 {
            println!(
                "forged control frames dropped: {}",
                report.forged_control_frames
            );
        }
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
