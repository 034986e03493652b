//! Command-line parsing (clap) and dispatch. Each family of commands lives in
//! its own file; this one owns the global options and config resolution.

mod admin;
mod chain;
mod common;
mod image;
mod mcast;
mod migrate;
mod migrate_disk;
mod migsim;
mod objects;
mod pull;
mod serve;
mod swarm;
mod vmsave;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use strato::config::{self, FileConfig};
use strato::store::{Engine, Store};

#[derive(Parser, Debug)]
#[command(
    name = "strato",
    version,
    about = "Content-addressed storage and VM image distribution"
)]
pub struct Cli {
    /// Data directory (default: $XDG_DATA_HOME/strato or ~/.local/share/strato)
    #[arg(long, global = true, env = "STRATO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file (default: DATA_DIR/strato.toml if it exists)
    #[arg(long, global = true, env = "STRATO_CONFIG")]
    config: Option<PathBuf>,
    /// Metadata engine: redb (default), sled or postgres (STRATO_ENGINE is
    /// read too)
    #[arg(
        long = "meta-engine",
        visible_alias = "engine",
        global = true,
        env = "STRATO_META_ENGINE"
    )]
    engine: Option<Engine>,
    /// PostgreSQL url of the postgres engine (postgres://user:password@host:port/db)
    #[arg(long, global = true, env = "STRATO_META_URL", hide_env_values = true)]
    meta_url: Option<String>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    storage: common::StorageArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the S3-compatible API over the data directory
    Serve(serve::ServeArgs),
    /// Print the repository's ticket-signing public key, alone on one line,
    /// in the form --trust-key takes (made on first use)
    TrustKey,
    /// Create a bucket
    Mb {
        bucket: String,
        /// Also index the 4 KiB blocks of its objects (see `block-index`)
        #[arg(long)]
        block_index: bool,
    },
    /// Remove an empty bucket
    Rb { bucket: String },
    /// Store a file as BUCKET/KEY
    Put(objects::PutArgs),
    /// Read BUCKET/KEY into FILE ("-" for standard output)
    Get(objects::GetArgs),
    /// List buckets, or the objects of BUCKET[/PREFIX]
    Ls { path: Option<String> },
    /// Delete an object
    Rm { path: String },
    /// Logical and stored bytes, dedup ratio, chunk counts per profile
    Stats,
    /// Re-hash every chunk and check manifests and reference counts
    Fsck,
    /// Reclaim space of unreferenced chunks (plan, then execute)
    Gc(admin::GcArgs),
    /// Per-bucket index of 4 KiB blocks, so pages and disk blocks resolve by id
    #[command(subcommand)]
    BlockIndex(admin::BlockIndexCmd),
    /// Delta pull s3://BUCKET/KEY into a node-local cache (and a sparse file)
    Pull(pull::PullArgs),
    /// Print a presigned GET URL for s3://BUCKET/KEY
    Presign(pull::PresignArgs),
    /// qcow2 overlays over backing files
    #[command(subcommand)]
    Overlay(image::OverlayCmd),
    /// Prepare VM disks on a hypervisor node
    #[command(subcommand)]
    Vm(image::VmCmd),
    /// On-demand pseudo images over NBD
    #[command(subcommand)]
    Nbd(image::NbdCmd),
    /// Show s3://BUCKET/KEY as a read-only file PATH (FUSE), fetched on demand
    Mount(image::MountArgs),
    /// Run a broadcast-chain node that receives images (unauthenticated: trusted networks only)
    ChainAgent(chain::AgentArgs),
    /// Send BUCKET/KEY to nodes: down a chain of chain-agents, or (--method swarm) watch swarm-agents pull it
    Propagate(chain::PropagateArgs),
    /// Live migration agents for QEMU's exec: hook (Shrinker, store-assisted)
    #[command(subcommand)]
    Migrate(migrate::MigrateCmd),
    /// Multicast image distribution with repair (send / recv)
    #[command(subcommand)]
    Mcast(mcast::McastCmd),
    /// Fetch s3://BUCKET/KEY in a swarm of nodes (the repository is the
    /// tracker), serve it to the other nodes, seed, report
    SwarmAgent(swarm::SwarmAgentArgs),
}

/// What every command gets: resolved settings and how to report.
pub struct Ctx {
    pub data_dir: PathBuf,
    pub file: FileConfig,
    pub engine: Option<Engine>,
    pub meta_url: Option<String>,
    pub json: bool,
    /// Progress bars only when a person is watching.
    pub interactive: bool,
}

impl Ctx {
    pub fn open_store(&self) -> Result<Store> {
        let (store, report) = Store::open_with_report(&self.data_dir, self.store_config())
            .with_context(|| format!("opening the store in {}", self.data_dir.display()))?;
        if report.recovered_segments > 0 {
            tracing::warn!(
                "recovered {} unsealed segment(s) left by an earlier crash ({} torn bytes cut)",
                report.recovered_segments,
                report.truncated_bytes
            );
        }
        Ok(store)
    }

    pub fn store_config(&self) -> strato::store::StoreConfig {
        self.file
            .store_config(self.engine, self.meta_url.as_deref())
    }

    /// The metadata engine for banners: its name, and for postgres where
    /// the database is (never the password).
    pub fn meta_description(&self) -> String {
        let cfg = self.store_config();
        match (&cfg.engine, &cfg.meta_url) {
            (Engine::Postgres, Some(url)) => {
                format!("postgres {}", strato::store::meta::redact_url(url))
            }
            (e, _) => e.name().to_string(),
        }
    }

    pub fn print_json(&self, v: &impl serde::Serialize) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    /// A command's result: `v` as JSON with `--json`, else `text()` prints
    /// the human form.
    pub fn emit(&self, v: &impl serde::Serialize, text: impl FnOnce()) -> Result<()> {
        if self.json {
            self.print_json(v)
        } else {
            text();
            Ok(())
        }
    }
}

/// Owner recorded for buckets created from the command line: the first
/// user of `strato serve`, so they are reachable through S3 with its keys.
pub fn local_owner(file: &FileConfig) -> String {
    file.users
        .first()
        .map(|u| u.name.clone())
        .unwrap_or_else(|| "admin".to_string())
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let data_dir_flag = cli.data_dir.clone();
    let config_path = cli.config.clone().or_else(|| {
        let dir = data_dir_flag
            .clone()
            .unwrap_or_else(config::default_data_dir);
        Some(dir.join("strato.toml")).filter(|p| p.exists())
    });
    let mut file = match &config_path {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    file.storage = file.storage.overridden_by(&cli.storage.to_config());
    let data_dir = data_dir_flag
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(config::default_data_dir);
    // The older name of the engine variable, still honoured under the new one.
    let engine = match cli.engine {
        Some(e) => Some(e),
        None => match std::env::var("STRATO_ENGINE") {
            Ok(v) if !v.is_empty() => Some(
                v.parse::<Engine>()
                    .map_err(|e| anyhow::anyhow!("STRATO_ENGINE: {e}"))?,
            ),
            _ => None,
        },
    };
    let ctx = Ctx {
        data_dir,
        file,
        engine,
        meta_url: cli.meta_url,
        json: cli.json,
        interactive: std::io::stderr().is_terminal(),
    };
    match cli.command {
        Command::Serve(a) => serve::serve(&ctx, a),
        Command::TrustKey => {
            let key = serve::repository_keyring(&ctx.data_dir)?.public().to_text();
            ctx.emit(&serde_json::json!({ "trust_key": key }), || {
                println!("{key}")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mb {
            bucket,
            block_index,
        } => objects::mb(&ctx, &bucket, block_index),
        Command::Rb { bucket } => objects::rb(&ctx, &bucket),
        Command::Put(a) => objects::put(&ctx, a),
        Command::Get(a) => objects::get(&ctx, a),
        Command::Ls { path } => objects::ls(&ctx, path.as_deref()),
        Command::Rm { path } => objects::rm(&ctx, &path),
        Command::Stats => admin::stats(&ctx),
        Command::Fsck => admin::fsck(&ctx),
        Command::Gc(a) => admin::gc(&ctx, a),
        Command::BlockIndex(c) => admin::block_index(&ctx, c),
        Command::Pull(a) => pull::pull(&ctx, a),
        Command::Presign(a) => pull::presign(&ctx, a),
        Command::Overlay(c) => image::overlay(&ctx, c),
        Command::Vm(c) => image::vm(&ctx, c),
        Command::Nbd(c) => image::nbd(&ctx, c),
        Command::Mount(a) => image::mount(&ctx, a),
        Command::ChainAgent(a) => chain::agent(&ctx, a),
        Command::Propagate(a) => chain::propagate(&ctx, a),
        Command::Migrate(c) => migrate::migrate(&ctx, c),
        Command::Mcast(c) => mcast::mcast(&ctx, c),
        Command::SwarmAgent(a) => swarm::agent(&ctx, a),
    }
}

/// Split "BUCKET/KEY" (the key may contain further slashes).
pub fn split_path(path: &str) -> Result<(&str, &str)> {
    let path = path.strip_prefix("s3://").unwrap_or(path);
    match path.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b, k)),
        _ => anyhow::bail!("expected BUCKET/KEY, got {path:?}"),
    }
}

pub fn progress_bar(ctx: &Ctx, len: u64, what: &str) -> indicatif::ProgressBar {
    if !ctx.interactive || ctx.json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

#[cfg(test)]
mod tests {
    /// clap checks every command's flags (unique names, valid groups) only
    /// when that command is parsed; this checks them all at once.
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
