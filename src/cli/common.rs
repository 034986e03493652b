//! What the node-side commands share: how to reach a repository (endpoint,
//! credentials, the CA for an https endpoint), s3:// URLs, the node-local
//! cache store, the runtime and the connect-with-retry to a peer agent.
//! Flags are defined here once and flattened into each command.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use strato::chunk_api::{parse_s3_url, ChunkClient, ChunkSource, Keys};
use strato::migrate::link::{LinkTls, WanStream};
use strato::store::{Store, StoreConfig};

use super::Ctx;

/// Credentials and TLS trust for a repository endpoint.
#[derive(Args, Debug, Clone)]
pub struct Credentials {
    /// Access key (default: STRATO_ACCESS_KEY, then AWS_ACCESS_KEY_ID)
    #[arg(long)]
    pub access_key: Option<String>,
    /// Secret key (default: STRATO_SECRET_KEY, then AWS_SECRET_ACCESS_KEY)
    #[arg(long)]
    pub secret_key: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// For an https:// endpoint: trust only this CA (PEM), e.g. the
    /// DATA_DIR/tls/ca.pem of a `serve --tls-self-signed`; default: the
    /// system's roots
    #[arg(long, env = "STRATO_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .find(|v| !v.is_empty())
}

impl Credentials {
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

    /// A chunk API client of `endpoint` with these credentials.
    pub fn client(&self, endpoint: &str) -> Result<ChunkClient> {
        ChunkClient::with_ca(endpoint, self.keys()?, &self.region, self.ca.as_deref())
            .with_context(|| format!("repository endpoint {endpoint}"))
    }
}

/// A repository every hypervisor-side command talks to (its S3 port
/// carries the chunk API).
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// Endpoint URL, e.g. http://repo:9000 or https://repo:9000
    #[arg(long, env = "STRATO_ENDPOINT")]
    pub endpoint: String,
    #[command(flatten)]
    pub creds: Credentials,
}

impl Remote {
    pub fn keys(&self) -> Result<Keys> {
        self.creds.keys()
    }

    pub fn client(&self) -> Result<ChunkClient> {
        self.creds.client(&self.endpoint)
    }
}

/// A repository and the node-local cache its chunks are kept in (pull,
/// pseudo images, lazy restores).
#[derive(Args, Debug, Clone)]
pub struct RemoteCache {
    #[command(flatten)]
    pub remote: Remote,
    /// Node-local chunk cache (a strato store; created if absent)
    #[arg(long)]
    pub cache: PathBuf,
}

impl RemoteCache {
    pub fn open(&self) -> Result<(ChunkClient, Store)> {
        Ok((self.remote.client()?, open_cache(&self.cache)?))
    }
}

/// Delta-pulls `s3://bucket/key` into `cache` (and `out`, when given), on
/// a runtime of its own.
pub fn pull_image(
    client: &ChunkClient,
    cache: &Store,
    (bucket, key): (&str, &str),
    out: Option<&Path>,
    parallel: usize,
) -> Result<strato::distribute::PullReport> {
    let opts = strato::distribute::PullOptions { parallel };
    runtime()?
        .block_on(strato::distribute::pull(
            client, cache, bucket, key, out, &opts,
        ))
        .with_context(|| format!("pulling s3://{bucket}/{key}"))
}

/// Where a repository-side sender (`propagate`, `mcast send`) reads the
/// image: a repository's chunk API with --endpoint, else the local store.
#[derive(Args, Debug, Clone)]
pub struct ImageSource {
    /// Read the image from a repository's chunk API instead of the local store
    #[arg(long, env = "STRATO_ENDPOINT")]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub creds: Credentials,
}

impl ImageSource {
    pub fn open(&self, ctx: &Ctx, image: &str) -> Result<Arc<dyn ChunkSource>> {
        match &self.endpoint {
            Some(endpoint) => Ok(Arc::new(self.creds.client(endpoint)?)),
            None => {
                if image.starts_with("s3://") {
                    tracing::info!("no --endpoint: reading {image} from the local store");
                }
                Ok(Arc::new(ctx.open_store()?))
            }
        }
    }

    /// Tell the repository (with --endpoint) how the session ended, node
    /// by node, for its console. Best effort: the nodes have their copies
    /// whatever happens here, so a failure is only a warning.
    pub async fn report(&self, bucket: &str, key: &str, report: &strato::chunk_api::SessionReport) {
        let Some(ep) = &self.endpoint else {
            return;
        };
        let sent = match self.creds.client(ep) {
            Ok(c) => c
                .report(bucket, key, report)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!("could not report the session to {ep}: {e:#}");
        }
    }
}

/// The destination site's chunk API for the migration agents (optional:
/// without it only repeated pages of the same VM are deduplicated).
#[derive(Args, Debug, Clone)]
pub struct SiteArgs {
    /// Destination site's strato endpoint, e.g. https://site:9000
    #[arg(long)]
    pub site: Option<String>,
    #[command(flatten)]
    pub creds: Credentials,
}

impl SiteArgs {
    pub fn client(&self) -> Result<Option<ChunkClient>> {
        let Some(endpoint) = &self.site else {
            return Ok(None);
        };
        Ok(Some(
            self.creds
                .client(endpoint)?
                .with_timeout(Duration::from_secs(30)),
        ))
    }
}

/// What both migration senders (memory and disk) are told: the receiver,
/// the destination site, the group and how to report.
#[derive(Args, Debug, Clone)]
pub struct MigrationTarget {
    /// Receiver's address (HOST:PORT)
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub site: SiteArgs,
    /// Migration group shared by the VMs of one cluster migration
    #[arg(long)]
    pub group: Option<String>,
    /// Name of this VM in reports
    #[arg(long, default_value = "vm")]
    pub vm: String,
    /// Send everything in full, with no lookup at the site (with --zstd:
    /// zstd only)
    #[arg(long)]
    pub no_dedup: bool,
    /// zstd level for pages and blocks sent in full (0: no compression)
    #[arg(long, default_value_t = 3)]
    pub zstd: i32,
    /// Batches whose site queries may be in flight at once
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Seconds to keep trying to reach the receiver
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Set the options a memory and a disk sender share from `target`'s flags:
/// the two option structs are separate types with the same fields, so a
/// macro sets them rather than a trait implemented twice.
macro_rules! set_sender_options {
    ($opts:expr, $target:expr) => {{
        $opts.group = $target.group()?;
        $opts.site = $target.site.client()?;
        $opts.dedup = !$target.no_dedup;
        $opts.zstd_level = ($target.zstd != 0).then_some($target.zstd);
        $opts.window = $target.window.clamp(1, 64);
    }};
}
pub(crate) use set_sender_options;

impl MigrationTarget {
    /// `--group`, checked before any page moves.
    pub fn group(&self) -> Result<Option<String>> {
        if let Some(g) = &self.group {
            if !strato::chunk_api::claims::valid_group(g) {
                anyhow::bail!("invalid --group {g:?}: use 1-128 of A-Z a-z 0-9 . _ -");
            }
            if self.site.site.is_none() {
                anyhow::bail!("--group needs --site (the destination site coordinates the group)");
            }
        }
        Ok(self.group.clone())
    }
}

/// What both migration receivers (memory and disk) are told.
#[derive(Args, Debug, Clone)]
pub struct ReceiverSite {
    #[command(flatten)]
    pub site: SiteArgs,
    /// Milliseconds to wait for a page or block another agent of the group
    /// is still sending
    #[arg(long, default_value_t = 2000)]
    pub wait_ms: u64,
    /// Don't store pages or blocks received in full at the site
    #[arg(long)]
    pub no_store: bool,
    /// Seconds to wait for the sender to connect
    #[arg(long, default_value_t = 600)]
    pub accept_timeout: u64,
    #[command(flatten)]
    pub link: LinkArgs,
    /// Write the JSON report here
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// How a migration agent secures its link to the other agent: mutual TLS
/// by default, plain TCP only when asked for by name.
#[derive(Args, Debug, Clone)]
pub struct LinkArgs {
    /// This agent's certificate chain (PEM), signed by the migration CA
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The migration CA: the peer's certificate must chain to it
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Plain TCP: guest memory and disk blocks cross the network in clear,
    /// and anyone who can reach the port can feed or take a migration
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_ca"])]
    pub insecure: bool,
}

impl LinkArgs {
    /// The TLS identity, loaded before anything else happens (`None` with
    /// `--insecure`, said loudly).
    pub fn load(&self) -> Result<Option<LinkTls>> {
        if self.insecure {
            eprintln!(
                "warning: --insecure: the migration link is plain TCP; guest memory and disk \
                 blocks cross the network in clear and the peer is not authenticated"
            );
            return Ok(None);
        }
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(LinkTls::load(cert, key, ca)?)),
            _ => anyhow::bail!(
                "the migration link is mutual TLS: give --tls-cert, --tls-key and --tls-ca \
                 (`strato migrate certs DIR HOST...` makes a CA and certificates), \
                 or --insecure for plain TCP"
            ),
        }
    }
}

/// The sender's end of the link: TCP to `to`, then TLS when configured.
pub async fn connect_link(to: &str, timeout: Duration, tls: Option<&LinkTls>) -> Result<WanStream> {
    let tcp = connect(to, timeout).await?;
    match tls {
        None => Ok(WanStream::Plain(tcp)),
        Some(tls) => {
            let host = to.rsplit_once(':').map_or(to, |(h, _)| h);
            match tokio::time::timeout(HANDSHAKE, tls.connect(tcp, host)).await {
                Ok(r) => Ok(r?),
                Err(_) => {
                    anyhow::bail!("TLS handshake with {to} did not finish within {HANDSHAKE:?}")
                }
            }
        }
    }
}

/// The receiver's end: the one sender, then TLS when configured. A sender
/// that fails the handshake ends the receiver with the reason; nothing of
/// the migration has started.
pub async fn accept_link(
    listener: tokio::net::TcpListener,
    timeout_secs: u64,
    tls: Option<&LinkTls>,
) -> Result<(WanStream, std::net::SocketAddr)> {
    let (tcp, peer) = accept_one(listener, timeout_secs).await?;
    match tls {
        None => Ok((WanStream::Plain(tcp), peer)),
        // Bounded: a peer that connects and stays silent must not hold the
        // receiver (it serves one sender) for longer than a handshake takes.
        Some(tls) => match tokio::time::timeout(HANDSHAKE, tls.accept(tcp)).await {
            Ok(r) => Ok((r?, peer)),
            Err(_) => {
                anyhow::bail!("TLS handshake with {peer} did not finish within {HANDSHAKE:?}")
            }
        },
    }
}

/// How long either end of a migration link waits for the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

pub fn s3_url(s: &str) -> Result<(String, String)> {
    parse_s3_url(s).with_context(|| format!("expected s3://BUCKET/KEY, got {s:?}"))
}

/// The node-local cache: a strato store of its own.
pub fn open_cache(dir: &Path) -> Result<Store> {
    Store::open(dir, StoreConfig::default())
        .with_context(|| format!("opening the cache store in {}", dir.display()))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?)
}

/// Connects to a peer agent, retrying until `timeout` (it may start after us).
pub async fn connect(to: &str, timeout: Duration) -> Result<tokio::net::TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::net::TcpStream::connect(to).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("connecting to {to}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to the receiver {to}")),
        }
    }
}

/// Waits (at most `timeout_secs`) for the one sender a receiver serves,
/// then stops listening.
pub async fn accept_one(
    listener: tokio::net::TcpListener,
    timeout_secs: u64,
) -> Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    tokio::time::timeout(Duration::from_secs(timeout_secs), listener.accept())
        .await
        .map_err(|_| anyhow::anyhow!("no sender connected within {timeout_secs} s"))?
        .context("accepting the sender")
}

/// A migration agent's report: as JSON to `path` when given, and on
/// standard error (QEMU owns standard output), as JSON with `--json`, else
/// in its `human` form.
pub fn write_report(
    ctx: &Ctx,
    path: Option<&PathBuf>,
    v: &impl serde::Serialize,
    human: &str,
) -> Result<()> {
    let json = serde_json::to_string_pretty(v)?;
    if let Some(p) = path {
        std::fs::write(p, &json).with_context(|| format!("writing the report {}", p.display()))?;
    }
    if ctx.json {
        eprintln!("{json}");
    } else {
        eprint!("{human}");
    }
    Ok(())
}

/// `[storage]` from the command line or STRATO_* variables (each wins over
/// the config file's value), for every command that opens the store: `gc`,
/// `fsck`, `stats` and the rest must see the same repository as `serve`.
#[derive(Args, Debug, Default)]
pub struct StorageArgs {
    /// Segment backend: local (DATA_DIR/segments, the default) or s3
    #[arg(long, global = true, env = "STRATO_STORAGE_BACKEND", value_enum)]
    storage_backend: Option<strato::config::StorageBackend>,
    /// Object store endpoint of the s3 backend (e.g. http://127.0.0.1:7480)
    #[arg(long, global = true, env = "STRATO_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Bucket holding the segments
    #[arg(long, global = true, env = "STRATO_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// Key prefix inside the bucket
    #[arg(long, global = true, env = "STRATO_S3_PREFIX")]
    s3_prefix: Option<String>,
    #[arg(long, global = true, env = "STRATO_S3_REGION")]
    s3_region: Option<String>,
    /// Object store keys (else [storage] or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY);
    /// prefer the environment to the command line, which others can read
    #[arg(
        long,
        global = true,
        env = "STRATO_S3_ACCESS_KEY",
        hide_env_values = true
    )]
    s3_access_key: Option<String>,
    #[arg(
        long,
        global = true,
        env = "STRATO_S3_SECRET_KEY",
        hide_env_values = true
    )]
    s3_secret_key: Option<String>,
    /// Local chunk read cache of the s3 backend (default DATA_DIR/cache)
    #[arg(long, global = true, env = "STRATO_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Bound of the read cache in bytes (0: no cache)
    #[arg(long, global = true, env = "STRATO_CACHE_BYTES")]
    cache_bytes: Option<u64>,
    /// Segments are uploaded in parts of this many bytes above it
    #[arg(long, global = true, env = "STRATO_S3_PART_SIZE")]
    s3_part_size: Option<u64>,
    /// Parts one ingest stream uploads at once
    #[arg(long, global = true, env = "STRATO_S3_UPLOAD_CONCURRENCY")]
    s3_upload_concurrency: Option<usize>,
}

impl StorageArgs {
    pub fn to_config(&self) -> strato::config::StorageConfig {
        strato::config::StorageConfig {
            backend: self.storage_backend,
            endpoint: self.s3_endpoint.clone(),
            bucket: self.s3_bucket.clone(),
            prefix: self.s3_prefix.clone(),
            region: self.s3_region.clone(),
            access_key: self.s3_access_key.clone(),
            secret_key: self.s3_secret_key.clone(),
            cache_dir: self.cache_dir.clone(),
            cache_bytes: self.cache_bytes,
            part_size: self.s3_part_size,
            upload_concurrency: self.s3_upload_concurrency,
        }
    }
}
