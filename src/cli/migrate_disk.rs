//! `strato migrate disk-send|disk-recv`: disk migration (non-shared
//! storage) through QEMU's mirror job, with every 4 KiB block the
//! destination site holds crossing the WAN as its id.
//!
//! ```text
//! Destination: export the new disk writable over NBD (QMP nbd-server-start
//!   and block-export-add), then
//!   strato migrate disk-recv --listen ADDR:PORT --nbd HOST:PORT --export NAME --site URL
//! Source:
//!   strato migrate disk-send --listen 127.0.0.1:PORT --to DEST:PORT --site URL [--group G]
//!   then QMP blockdev-add an nbd node on that port, blockdev-mirror into it.
//! ```
//!
//! Each agent prints one line on standard output once it is ready (tests
//! and scripts wait for it); reports go to standard error and `--report`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use strato::image::nbd_client::NbdClient;
use strato::migrate::disk::recv::{receive_disk, DiskRecvOptions};
use strato::migrate::disk::send::{DiskSendOptions, DiskSender};

use super::common::{
    accept_link, connect_link, runtime, set_sender_options, write_report, MigrationTarget,
    ReceiverSite,
};
use super::Ctx;

#[derive(Args, Debug)]
pub struct DiskSendArgs {
    /// Where QEMU's mirror job connects (NBD; keep it on localhost)
    #[arg(long)]
    listen: SocketAddr,
    /// NBD export name
    #[arg(long, default_value = "strato")]
    export: String,
    #[command(flatten)]
    target: MigrationTarget,
    /// 4 KiB blocks per batch (one site query and one blob each)
    #[arg(long, default_value_t = 512)]
    batch_blocks: usize,
    /// Seconds to wait for QEMU to connect
    #[arg(long, default_value_t = 600)]
    accept_timeout: u64,
}

#[derive(Args, Debug)]
pub struct DiskRecvArgs {
    /// Address to listen on for the sender (HOST:PORT)
    #[arg(long)]
    listen: SocketAddr,
    /// The destination QEMU's NBD server (HOST:PORT)
    #[arg(long)]
    nbd: String,
    /// Its writable export holding the new disk
    #[arg(long)]
    export: String,
    #[command(flatten)]
    recv: ReceiverSite,
}

pub fn disk_send(ctx: &Ctx, a: DiskSendArgs) -> Result<ExitCode> {
    let tls = a.target.link.load()?;
    let mut opts = DiskSendOptions::new(&a.target.vm);
    set_sender_options!(opts, a.target);
    opts.batch_blocks = a.batch_blocks.clamp(1, 8192);
    opts.accept_timeout = Duration::from_secs(a.accept_timeout);
    let rt = runtime()?;
    let report = rt.block_on(async {
        // Bind first: a port already taken is the user's error, before any WAN traffic.
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        let within = Duration::from_secs(a.target.connect_timeout);
        let conn = connect_link(&a.target.to, within, tls.as_ref()).await?;
        let sender = DiskSender::connect(conn, opts)
            .await
            .context("greeting the disk receiver")?;
        println!(
            "strato disk-send: NBD export {} at {} ({} bytes)",
            a.export,
            listener.local_addr().unwrap_or(a.listen),
            sender.size()
        );
        sender
            .serve(listener, &a.export)
            .await
            .context("disk migration sender")
    })?;
    write_report(ctx, a.target.report.as_ref(), &report, &report.to_string())?;
    Ok(ExitCode::SUCCESS)
}

pub fn disk_recv(ctx: &Ctx, a: DiskRecvArgs) -> Result<ExitCode> {
    let tls = a.recv.link.load()?;
    let opts = DiskRecvOptions {
        site: a.recv.site.client()?,
        wait: Duration::from_millis(a.recv.wait_ms.min(600_000)),
        store_blocks: !a.recv.no_store,
    };
    let rt = runtime()?;
    let report = rt.block_on(async {
        let nbd = NbdClient::connect(&a.nbd, &a.export)
            .await
            .with_context(|| format!("opening NBD export {:?} at {}", a.export, a.nbd))?;
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        println!(
            "strato disk-recv: listening on {} for export {} ({} bytes)",
            listener.local_addr().unwrap_or(a.listen),
            a.export,
            nbd.size()
        );
        let (conn, peer) = accept_link(listener, a.recv.accept_timeout, tls.as_ref()).await?;
        tracing::info!("disk sender connected from {peer}");
        receive_disk(conn, nbd, opts)
            .await
            .context("disk migration receiver")
    })?;
    write_report(ctx, a.recv.report.as_ref(), &report, &report.to_string())?;
    Ok(ExitCode::SUCCESS)
}
