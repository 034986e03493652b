//! `strato mcast send` (repository side) and `strato mcast recv` (each
//! node): multicast image distribution with repair, see
//! `distribute::mcast`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use strato::distribute::mcast::sender::SendProgress;
use strato::distribute::mcast::{self, wire, Outcome, RecvOptions, RecvSink, SendOptions, Source};

use super::common::{open_cache, runtime, ImageSource};
use super::{split_path, Ctx};

/// Default TCP port of the control channel.
const CONTROL_PORT: u16 = 7401;

#[derive(Subcommand, Debug)]
pub enum McastCmd {
    /// Multicast s3://BUCKET/KEY to the receivers that join, with repair rounds
    Send(SendArgs),
    /// Join a multicast session and receive its image into a file or a store
    Recv(RecvArgs),
}

pub fn mcast(ctx: &Ctx, cmd: McastCmd) -> Result<ExitCode> {
    match cmd {
        McastCmd::Send(a) => send(ctx, a),
        McastCmd::Recv(a) => recv(ctx, a),
    }
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// s3://BUCKET/KEY (with --endpoint), or BUCKET/KEY of the local store
    image: String,
    #[command(flatten)]
    source: ImageSource,
    /// Multicast group and port, e.g. 239.77.0.1:7500
    #[arg(long)]
    group: SocketAddrV4,
    /// Largest sending rate on the link, headers included: e.g. 200mbit, 1g, 50M (bits/s)
    #[arg(long, value_parser = parse_rate)]
    rate: u64,
    /// Lowest rate the sender falls back to when receivers lose much
    #[arg(long, value_parser = parse_rate)]
    min_rate: Option<u64>,
    /// Receivers to wait for before sending
    #[arg(long)]
    expect: usize,
    /// Local address multicast leaves through (IP_MULTICAST_IF)
    #[arg(long)]
    interface: Option<Ipv4Addr>,
    #[arg(long, default_value_t = 1)]
    ttl: u32,
    /// Chunk bytes per datagram (default fills a 1500-byte MTU)
    #[arg(long, default_value_t = wire::DEFAULT_PAYLOAD)]
    payload: usize,
    /// Control channel address (default: --interface, else 127.0.0.1; port 7401).
    /// Receivers' frames are tagged with the session key (see `mcast::control`).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Seconds to wait for --expect receivers to join
    #[arg(long, default_value_t = 60)]
    join_timeout: u64,
    /// Seconds a receiver has to answer after a round
    #[arg(long, default_value_t = 10)]
    round_timeout: u64,
    /// Rounds without progress before a receiver is evicted
    #[arg(long, default_value_t = 3)]
    max_stalled_rounds: u32,
    /// Rounds before receivers still incomplete are evicted
    #[arg(long, default_value_t = 100)]
    max_rounds: u32,
    /// Fraction of a round a receiver may lose before the rate halves
    #[arg(long, default_value_t = 0.2)]
    loss_threshold: f64,
    /// MiB of chunks kept in memory for repair rounds
    #[arg(long, default_value_t = 1024)]
    cache_mb: u64,
    /// Seconds the session ticket is valid (receivers refuse it afterwards)
    #[arg(long, default_value_t = chunk_api::DEFAULT_TICKET_SECS)]
    ticket_lifetime: u64,
    /// Send an unsigned session (only receivers without --trust-key accept it)
    #[arg(long)]
    unsigned: bool,
    /// Control connections served at once (more are closed unanswered)
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

/// The session ticket for the group: from the repository's chunk API with
/// `--endpoint`, or signed here with the local repository's key.
async fn group_session(
    ctx: &Ctx,
    a: &SendArgs,
    source: &Source,
    bucket: &str,
    key: &str,
) -> Result<chain_broadcast::SessionAuth> {
    let group = a.group.to_string();
    match &a.source.endpoint {
        Some(ep) => {
            let req = chunk_api::TicketRequest {
                nodes: None,
                group: Some(group),
                lifetime_secs: Some(a.ticket_lifetime),
            };
            let grant = a
                .source
                .creds
                .client(ep)?
                .ticket(bucket, key, &req)
                .await
                .with_context(|| format!("session ticket for {bucket}/{key} from {ep}"))?;
            strato::distribute::session_from_grant(&grant)
                .context("the repository's session ticket")
        }
        None => {
            let doc = source
                .manifest(bucket, key)
                .await
                .with_context(|| format!("manifest of {bucket}/{key} in the local store"))?;
            super::serve::sign_local_session(
                &ctx.data_dir,
                &doc,
                strato::distribute::Audience::Group(group),
                a.ticket_lifetime,
            )
        }
    }
}

/// "200mbit", "200M", "1.5g", "64k", "100000" (bits per second).
fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("bit/s")
        .or_else(|| t.strip_suffix("bps"))
        .or_else(|| t.strip_suffix("bit"))
        .unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v * mul >= 64_000.0 && v * mul <= 1e12 => Ok((v * mul) as u64),
        _ => Err(format!(
            "invalid rate {s:?}: use bits per second such as 200mbit, 1g or 64k (at least 64k)"
        )),
    }
}

/// The multicast's outcome, receiver by receiver, as the repository's
/// console shows it.
fn session_report(r: &mcast::SenderReport) -> strato::chunk_api::SessionReport {
    strato::chunk_api::SessionReport {
        kind: "multicast".into(),
        nodes: r
            .receivers
            .iter()
            .map(|n| strato::chunk_api::NodeOutcome {
                node: n.addr.clone(),
                ok: matches!(n.outcome, Outcome::Complete),
                reason: n.reason.clone(),
                bytes_received: n.progress.bytes_written,
                seconds: n.elapsed_ms as f64 / 1000.0,
            })
            .collect(),
        bytes_sent: r.bytes_sent,
        object_size: r.size,
        seconds: r.elapsed_ms as f64 / 1000.0,
    }
}

fn send(ctx: &Ctx, a: SendArgs) -> Result<ExitCode> {
    let (bucket, key) = split_path(&a.image)?;
    let (bucket, key) = (bucket.to_string(), key.to_string());
    if !a.group.ip().is_multicast() {
        bail!(
            "--group {} is not a multicast address (224.0.0.0/4)",
            a.group
        );
    }
    if a.expect == 0 {
        bail!("--expect must be at least 1");
    }
    if !(64..=65507 - wire::HEADER).contains(&a.payload) {
        bail!("--payload must be 64..={}", 65507 - wire::HEADER);
    }
    if !(a.loss_threshold > 0.0 && a.loss_threshold < 1.0) {
        bail!("--loss-threshold must be between 0 and 1");
    }
    let source: Source = a.source.open(ctx, &a.image)?;
    let interface = a.interface.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let listen = a.listen.unwrap_or_else(|| {
        let ip = a.interface.unwrap_or(Ipv4Addr::LOCALHOST);
        SocketAddr::from((ip, CONTROL_PORT))
    });
    let opts = SendOptions {
        group: a.group,
        interface,
        ttl: a.ttl,
        payload: a.payload,
        rate_bits: a.rate,
        min_rate_bits: a.min_rate.unwrap_or(a.rate / 8).min(a.rate),
        expect: a.expect,
        join_timeout: Duration::from_secs(a.join_timeout.max(1)),
        round_timeout: Duration::from_secs(a.round_timeout.max(1)),
        max_stalled_rounds: a.max_stalled_rounds.max(1),
        max_rounds: a.max_rounds.max(1),
        loss_threshold: a.loss_threshold,
        cache_bytes: a.cache_mb << 20,
        session: None,
        max_connections: a.max_connections.max(1),
    };
    let mut opts = opts;
    let rt = runtime()?;
    let progress = Arc::new(SendProgress::default());
    let report = rt.block_on(async {
        if !a.unsigned {
            opts.session = Some(group_session(ctx, &a, &source, &bucket, &key).await?);
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        // Stderr, so --json output stays one document; scripts wait for it.
        eprintln!(
            "mcast send: control channel on {addr}, group {}, waiting for {} receiver(s)",
            a.group, a.expect
        );
        let pb = super::progress_bar(ctx, 0, &format!("{bucket}/{key}"));
        let ticker = {
            let (pb, progress) = (pb.clone(), Arc::clone(&progress));
            tokio::spawn(async move {
                loop {
                    pb.set_length(progress.planned.load(Ordering::Relaxed));
                    pb.set_position(progress.bytes_sent.load(Ordering::Relaxed));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let r = mcast::send(source, &bucket, &key, listener, &opts, progress).await;
        ticker.abort();
        pb.finish_and_clear();
        let r = r.with_context(|| format!("multicasting {bucket}/{key}"))?;
        a.source.report(&bucket, &key, &session_report(&r)).await;
        anyhow::Ok(r)
    })?;
    ctx.emit(&report, || {
        let wire_mb = report.bytes_sent as f64 / 1e6;
        println!(
            "{bucket}/{key}: {} bytes to {} receiver(s) in {:.2}s, {} round(s), {wire_mb:.1} MB on the wire",
            report.size,
            report.receivers.len(),
            report.elapsed_ms as f64 / 1000.0,
            report.rounds.len(),
        );
        if report.forged_control_frames > 0 {
            println!(
                "forged control frames dropped: {}",
                report.forged_control_frames
            );
        }
        println!(
            "{:<22} {:<9} {:>7} {:>10} {:>8} {:>9}  reason",
            "receiver", "outcome", "held", "written", "foreign", "time"
        );
        for r in &report.receivers {
            println!(
                "{:<22} {:<9} {:>7} {:>10} {:>8} {:>8.2}s  {}",
                r.addr,
                match r.outcome {
                    Outcome::Complete => "complete",
                    Outcome::Evicted => "EVICTED",
                },
                r.held_chunks,
                r.progress.bytes_written,
                r.progress.foreign,
                r.elapsed_ms as f64 / 1000.0,
                r.reason.as_deref().unwrap_or("")
            );
        }
    })?;
    if report.all_complete() {
        Ok(ExitCode::SUCCESS)
    } else {
        let bad: Vec<&str> = report
            .receivers
            .iter()
            .filter(|r| r.outcome != Outcome::Complete)
            .map(|r| r.addr.as_str())
            .collect();
        if report.joined < report.expected {
            eprintln!(
                "error: only {} of {} expected receivers joined",
                report.joined, report.expected
            );
        }
        if !bad.is_empty() {
            eprintln!("error: evicted: {}", bad.join(", "));
        }
        Ok(ExitCode::FAILURE)
    }
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("sink").required(true).args(["out", "store"])))]
pub struct RecvArgs {
    /// Multicast group and port the sender uses (checked against the session)
    #[arg(long)]
    group: SocketAddrV4,
    /// The sender's control channel, HOST[:PORT] (port 7401 by default)
    #[arg(long)]
    sender: String,
    /// Write the image to FILE (sparse; replaced atomically when complete)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Commit the image to this strato store; chunks it holds are not sent again
    #[arg(long)]
    store: Option<PathBuf>,
    /// Local address to join the group on (default: the one facing the sender)
    #[arg(long)]
    interface: Option<Ipv4Addr>,
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds of silence from the sender before giving up
    #[arg(long, default_value_t = 600)]
    idle_timeout: u64,
    #[command(flatten)]
    trust: super::chain::TrustArgs,
}

fn resolve_sender(s: &str) -> Result<SocketAddr> {
    let with_port = if s.parse::<SocketAddr>().is_ok() || s.rsplit_once(':').is_some() {
        s.to_string()
    } else {
        format!("{s}:{CONTROL_PORT}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving --sender {s:?}"))?
        .next()
        .with_context(|| format!("--sender {s:?} resolves to no address"))
}

fn recv(ctx: &Ctx, a: RecvArgs) -> Result<ExitCode> {
    if !a.group.ip().is_multicast() {
        bail!(
            "--group {} is not a multicast address (224.0.0.0/4)",
            a.group
        );
    }
    let sender = resolve_sender(&a.sender)?;
    let trust = a.trust.load("mcast recv", sender.ip())?;
    let sink = match (&a.out, &a.store) {
        (Some(out), None) => {
            if out.is_dir() {
                bail!("--out {} is a directory", out.display());
            }
            RecvSink::File(out.clone())
        }
        (None, Some(dir)) => RecvSink::Store {
            store: open_cache(dir)?,
            dir: dir.clone(),
        },
        _ => bail!("give exactly one of --out FILE and --store DIR"),
    };
    let opts = RecvOptions {
        sender,
        interface: a.interface,
        group: Some(a.group),
        sink,
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
        trust,
    };
    let rt = runtime()?;
    let bytes = Arc::new(AtomicU64::new(0));
    let report = rt.block_on(async {
        let pb = super::progress_bar(ctx, 0, &format!("from {sender}"));
        let ticker = {
            let (pb, bytes) = (pb.clone(), Arc::clone(&bytes));
            tokio::spawn(async move {
                loop {
                    pb.set_position(bytes.load(Ordering::Relaxed));
                    pb.set_length(pb.position().max(pb.length().unwrap_or(0)));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let r = mcast::receive(opts, bytes).await;
        ticker.abort();
        pb.finish_and_clear();
        anyhow::Ok(r.with_context(|| format!("receiving from {sender}"))?)
    })?;
    ctx.emit(&report, || {
        println!(
            "received {}/{}: {} bytes in {:.2}s, {} round(s), {} of {} chunks already held, {} foreign datagrams ignored, {} chunk(s) failed verification and were repaired",
            report.bucket,
            report.key,
            report.size,
            report.elapsed_ms as f64 / 1000.0,
            report.rounds,
            report.held_chunks,
            report.chunks,
            report.progress.foreign,
            report.progress.verify_failures
        );
        if let Some(o) = &report.out {
            println!("wrote {}", o.display());
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("200mbit"), Ok(200_000_000));
        assert_eq!(parse_rate("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_rate("64k"), Ok(64_000));
        assert_eq!(parse_rate("1000000"), Ok(1_000_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1k").is_err());
        assert!(parse_rate("-5m").is_err());
    }
}
