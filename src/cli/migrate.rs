//! `strato migrate send|recv|report`: the migration agents QEMU runs on its
//! `exec:` hook, and the per-group report.
//!
//! Source:      migrate "exec:strato migrate send --to DEST:PORT --site URL ..."
//! Destination: -incoming "exec:strato migrate recv --listen ADDR:PORT --site URL ..."
//!
//! QEMU owns standard input and output, so reports go to standard error
//! and to `--report FILE` (JSON).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use strato::migrate::codec::rcache::CodecConfig;
use strato::migrate::memory::receiver::{self, ReceiverOptions};
use strato::migrate::memory::report::{GroupReport, VmReport};
use strato::migrate::memory::sender::{self, SenderOptions};

use super::common::{
    accept_link, connect_link, runtime, set_sender_options, write_report, MigrationTarget,
    ReceiverSite,
};
use super::Ctx;

#[derive(Subcommand, Debug)]
pub enum MigrateCmd {
    /// Source agent: QEMU's migration stream on stdin, to a receiver over the WAN
    Send(SendArgs),
    /// Destination agent: listen for a sender, rebuild QEMU's stream on stdout
    Recv(RecvArgs),
    /// Combine the JSON reports of a group's senders
    Report(ReportArgs),
    /// Disk migration, source: a writable NBD export for QEMU's mirror job, to a disk-recv over the WAN
    DiskSend(super::migrate_disk::DiskSendArgs),
    /// Disk migration, destination: write what disk-send sends into QEMU's NBD export
    DiskRecv(super::migrate_disk::DiskRecvArgs),
    /// Make a migration CA (reused if DIR has one) and a certificate for
    /// each host: the --tls-cert/--tls-key/--tls-ca files of the agents
    Certs(CertsArgs),
    #[command(flatten)]
    Policy(super::migsim::MigsimCmd),
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory for ca.pem, ca-key.pem and HOST.pem / HOST-key.pem
    dir: PathBuf,
    /// Host names or IP addresses the agents are reached by (each gets a
    /// certificate good for both sending and receiving)
    #[arg(required = true)]
    hosts: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    target: MigrationTarget,
    /// Pages per batch (one site query and one compressed blob each)
    #[arg(long, default_value_t = 512)]
    batch_pages: usize,
    /// Read QEMU's stream at most this many milliseconds (of the measured
    /// WAN drain rate) ahead of the WAN, so QEMU paces itself to the link
    /// and switches over without a backlog (0: no bound but the queues)
    #[arg(long, default_value_t = 100)]
    read_ahead_ms: u64,
    /// Redundancy cache (CloudNet §4.2): sub-page blocks per page for
    /// pages sent in full (0: cache off)
    #[arg(long, default_value_t = 4)]
    rcache_blocks: usize,
    /// Redundancy cache size at each end, MiB
    #[arg(long, default_value_t = 64)]
    rcache_mib: usize,
    /// Send a re-sent page as a delta against its previous version (CloudNet §4.3)
    #[arg(long, overrides_with = "no_deltas")]
    deltas: bool,
    /// Send re-sent pages whole (no page deltas)
    #[arg(long, overrides_with = "deltas")]
    no_deltas: bool,
    /// Largest delta worth sending, bytes; bigger changes go whole
    #[arg(long, default_value_t = 2048)]
    delta_threshold: usize,
    /// Previous page versions kept for deltas at each end, MiB (FIFO)
    #[arg(long, default_value_t = 64)]
    delta_history_mib: usize,
    /// Once QEMU has stopped the guest, ask the site nothing more: pages
    /// not known from earlier answers or sent before go literally
    #[arg(long)]
    no_switchover_lookups: bool,
    /// Once QEMU has stopped the guest, wait at most this long for a site
    /// answer before sending what is unanswered by what the sender knows
    /// (0: about twice what answers have been taking, 20-200 ms)
    #[arg(long, default_value_t = 0)]
    switchover_grace_ms: u64,
}

#[derive(Args, Debug)]
pub struct RecvArgs {
    /// Address to listen on for the sender (HOST:PORT)
    #[arg(long)]
    listen: SocketAddr,
    #[command(flatten)]
    recv: ReceiverSite,
    /// Keep the pages stored at the site as the object BUCKET/KEY (a
    /// bucket the site's credentials own), so later migrations and clones
    /// still find them after garbage collection's grace period
    #[arg(long, value_name = "BUCKET/KEY", conflicts_with = "no_store")]
    keep: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// JSON reports written by `migrate send --report`
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// QEMU's downtime of a VM (from query-migrate), as VM=MILLISECONDS
    #[arg(long)]
    downtime: Vec<String>,
}

/// `--keep BUCKET/KEY`, checked before any page moves.
fn keep_target(keep: Option<&str>, have_site: bool) -> Result<Option<(String, String)>> {
    let Some(keep) = keep else {
        return Ok(None);
    };
    let (bucket, key) = match keep.trim_start_matches("s3://").split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => (bucket, key),
        _ => bail!("--keep wants BUCKET/KEY, got {keep:?}"),
    };
    strato::store::check_bucket_name(bucket).with_context(|| format!("--keep {keep}"))?;
    strato::store::check_key(key).with_context(|| format!("--keep {keep}"))?;
    if !have_site {
        bail!("--keep needs --site: the pages are kept at the destination site");
    }
    Ok(Some((bucket.to_string(), key.to_string())))
}

pub fn migrate(ctx: &Ctx, cmd: MigrateCmd) -> Result<ExitCode> {
    match cmd {
        MigrateCmd::Send(a) => send(ctx, a),
        MigrateCmd::Recv(a) => recv(ctx, a),
        MigrateCmd::Report(a) => report(ctx, a),
        MigrateCmd::DiskSend(a) => super::migrate_disk::disk_send(ctx, a),
        MigrateCmd::DiskRecv(a) => super::migrate_disk::disk_recv(ctx, a),
        MigrateCmd::Certs(a) => certs(ctx, a),
        MigrateCmd::Policy(c) => super::migsim::migsim(ctx, c),
    }
}

/// Standard input/output as files: QEMU's stream is binary, so no line
/// buffering, and the blocking threads own them.
fn stdio_file(fd: std::os::fd::BorrowedFd<'_>, what: &str) -> Result<std::fs::File> {
    Ok(std::fs::File::from(
        fd.try_clone_to_owned()
            .with_context(|| format!("duplicating {what}"))?,
    ))
}

fn certs(ctx: &Ctx, a: CertsArgs) -> Result<ExitCode> {
    let (ca, made) = strato::server::tls::migration_certs(&a.dir, &a.hosts)?;
    let v = serde_json::json!({
        "ca": ca,
        "hosts": made.iter().map(|m| serde_json::json!({
            "host": m.name, "cert": m.cert, "key": m.key,
        })).collect::<Vec<_>>(),
    });
    ctx.emit(&v, || {
        println!("migration CA: {}", ca.display());
        for m in &made {
            println!(
                "{}: --tls-cert {} --tls-key {} --tls-ca {}",
                m.name,
                m.cert.display(),
                m.key.display(),
                ca.display()
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn send(ctx: &Ctx, a: SendArgs) -> Result<ExitCode> {
    let tls = a.target.link.load()?;
    let mut opts = SenderOptions::new(&a.target.vm);
    set_sender_options!(opts, a.target);
    opts.batch_pages = a.batch_pages.clamp(1, 8192);
    opts.read_ahead = (a.read_ahead_ms != 0).then(|| Duration::from_millis(a.read_ahead_ms));
    opts.codec = codec_config(&a)?;
    opts.switchover_lookups = !a.no_switchover_lookups;
    opts.switchover_grace = (a.switchover_grace_ms != 0)
        .then(|| Duration::from_millis(a.switchover_grace_ms.min(60_000)));
    let input = stdio_file(std::io::stdin().as_fd(), "standard input")?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let within = Duration::from_secs(a.target.connect_timeout);
        let conn = connect_link(&a.target.to, within, tls.as_ref()).await?;
        sender::send(input, conn, opts)
            .await
            .context("migration sender")
    })?;
    write_report(ctx, a.target.report.as_ref(), &report, &report.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The page codec the flags ask for (`None`: cache and deltas both off).
fn codec_config(a: &SendArgs) -> Result<Option<CodecConfig>> {
    // --deltas and --no-deltas override each other: the last one wins.
    let deltas = !a.no_deltas;
    if a.rcache_blocks == 0 && !deltas {
        return Ok(None);
    }
    let c = CodecConfig {
        cbr: a.rcache_blocks > 0,
        blocks_per_page: a.rcache_blocks.max(1),
        cache_bytes: a.rcache_mib.saturating_mul(1 << 20),
        delta: deltas,
        delta_threshold: a.delta_threshold,
        delta_history_bytes: a.delta_history_mib.saturating_mul(1 << 20),
        ..sender::default_codec()
    };
    c.validate()
        .context("page codec flags (--rcache-*, --delta-*)")?;
    Ok(Some(c))
}

/// Connect, retrying while the receiver is starting (bounded).
fn recv(ctx: &Ctx, a: RecvArgs) -> Result<ExitCode> {
    let tls = a.recv.link.load()?;
    let opts = ReceiverOptions {
        site: a.recv.site.client()?,
        wait: Duration::from_millis(a.recv.wait_ms.min(60_000)),
        store_pages: !a.recv.no_store,
        keep: keep_target(a.keep.as_deref(), a.recv.site.site.is_some())?,
        ..ReceiverOptions::default()
    };
    let output = stdio_file(std::io::stdout().as_fd(), "standard output")?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let (conn, peer) = accept_link(listener, a.recv.accept_timeout, tls.as_ref()).await?;
        tracing::info!("sender connected from {peer}");
        receiver::receive(conn, output, opts)
            .await
            .context("migration receiver")
    })?;
    let human = format!(
        "received vm {}: {} stream bytes from {} WAN bytes; pages raw {} local {} site {} (after waiting {}) pulled {}; stored {}; {:.2} s, verified\n",
        report.vm,
        report.stream_bytes,
        report.wan_bytes,
        report.pages_raw,
        report.pages_local,
        report.pages_site,
        report.pages_waited,
        report.pages_pulled,
        report.pages_stored,
        report.seconds
    );
    write_report(ctx, a.recv.report.as_ref(), &report, &human)?;
    Ok(ExitCode::SUCCESS)
}

fn report(ctx: &Ctx, a: ReportArgs) -> Result<ExitCode> {
    let mut vms = Vec::new();
    for f in &a.files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: VmReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a migration report", f.display()))?;
        vms.push(v);
    }
    for d in &a.downtime {
        let (vm, ms) = d
            .split_once('=')
            .and_then(|(v, m)| Some((v, m.parse::<u64>().ok()?)))
            .with_context(|| format!("expected --downtime VM=MILLISECONDS, got {d:?}"))?;
        let v = vms
            .iter_mut()
            .find(|r| r.vm == vm)
            .with_context(|| format!("--downtime names {vm:?}, which no report has"))?;
        v.detail.downtime_ms = Some(ms);
    }
    let g = GroupReport::of(vms);
    ctx.emit(&g, || {
        print!("{g}");
    })?;
    Ok(ExitCode::SUCCESS)
}
