//! `strato-wanem`: a userspace WAN emulator between two TAP devices, for
//! kernels without `tc netem` (this project's machines have none).
//!
//! It creates two TAP devices, prints `tap-a=NAME tap-b=NAME` on stdout and
//! forwards Ethernet frames between them with per-direction delay, rate,
//! a bounded drop-tail queue and optional seeded loss. The caller moves each
//! TAP into a network namespace (`ip link set NAME netns NS`) and configures
//! it; the emulator's file descriptors stay valid across the move. It stops
//! on SIGTERM/SIGINT or after `--duration`, printing its counters as JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use strato_wanem::{Emulator, LinkShape, Tap};

#[derive(Parser, Debug)]
#[command(
    name = "strato-wanem",
    about = "Emulate a WAN link (delay, rate, queue, loss) between two TAP devices"
)]
struct Args {
    /// Name of the first TAP device (default: the kernel's choice).
    #[arg(long)]
    tap_a: Option<String>,
    /// Name of the second TAP device (default: the kernel's choice).
    #[arg(long)]
    tap_b: Option<String>,
    /// One-way delay in milliseconds, each direction (10 each way is a
    /// 20 ms round trip).
    #[arg(long, default_value_t = 10.0)]
    delay_ms: f64,
    /// One-way delay a→b in milliseconds (overrides --delay-ms).
    #[arg(long)]
    delay_ab_ms: Option<f64>,
    /// One-way delay b→a in milliseconds (overrides --delay-ms).
    #[arg(long)]
    delay_ba_ms: Option<f64>,
    /// Bottleneck rate each direction, bits/s of whole Ethernet frames:
    /// a number with an optional kbit/mbit/gbit suffix; 0 = unlimited.
    #[arg(long, default_value = "0")]
    rate: String,
    /// Rate a→b (overrides --rate).
    #[arg(long)]
    rate_ab: Option<String>,
    /// Rate b→a (overrides --rate).
    #[arg(long)]
    rate_ba: Option<String>,
    /// Bytes that may go back to back at line speed after an idle period.
    #[arg(long, default_value_t = 0)]
    burst_bytes: u64,
    /// Frames queued behind the bottleneck before drop-tail (netem's limit).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Random loss in percent, each direction.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Loss a→b in percent (overrides --loss).
    #[arg(long)]
    loss_ab: Option<f64>,
    /// Loss b→a in percent (overrides --loss).
    #[arg(long)]
    loss_ba: Option<f64>,
    /// Seed of the loss draws (runs with the same seed lose the same frames
    /// of the same sequence).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop by itself after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Also write the final counters (JSON) to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// `100mbit`, `1.5gbit`, `64kbit`, `2000000` → bits per second.
fn parse_rate(s: &str) -> Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(suffix, m)| lower.strip_suffix(suffix).map(|n| (n.to_string(), *m)))
        .unwrap_or((lower.clone(), 1.0));
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("rate {s:?}: expected e.g. 100mbit, 64kbit or bits/s"))?;
    if !v.is_finite() || v < 0.0 || v * mult > 1e12 {
        bail!("rate {s:?} out of range (0 to 1000gbit)");
    }
    Ok((v * mult).round() as u64)
}

fn shape(
    args: &Args,
    delay: Option<f64>,
    rate: &Option<String>,
    loss: Option<f64>,
) -> Result<LinkShape> {
    let delay_ms = delay.unwrap_or(args.delay_ms);
    if !delay_ms.is_finite() || !(0.0..=10_000.0).contains(&delay_ms) {
        bail!("delay {delay_ms} ms out of range (0 to 10000)");
    }
    let loss = loss.unwrap_or(args.loss);
    if !loss.is_finite() || !(0.0..100.0).contains(&loss) {
        bail!("loss {loss} % out of range (0 to below 100)");
    }
    if args.limit == 0 {
        bail!("--limit must be at least 1 frame");
    }
    Ok(LinkShape {
        delay: Duration::from_secs_f64(delay_ms / 1000.0),
        rate_bps: parse_rate(rate.as_deref().unwrap_or(&args.rate))?,
        burst_bytes: args.burst_bytes,
        limit_frames: args.limit,
        loss: loss / 100.0,
    })
}

async fn wait_for_stop(duration: Option<f64>, emulator: &Emulator) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let deadline = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = &mut deadline => return Ok(()),
            _ = tick.tick() => {
                if let Ok(e) = emulator.errors.try_recv() {
                    return Err(e.into());
                }
            }
        }
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(d) = args.duration {
        if !d.is_finite() || d <= 0.0 || d > 1e7 {
            bail!("--duration {d} out of range");
        }
    }
    let ab = shape(&args, args.delay_ab_ms, &args.rate_ab, args.loss_ab)?;
    let ba = shape(&args, args.delay_ba_ms, &args.rate_ba, args.loss_ba)?;
    let a = Tap::create(args.tap_a.as_deref()).context("TAP a")?;
    let b = Tap::create(args.tap_b.as_deref()).context("TAP b")?;
    let emulator = Emulator::start(&a, &b, ab.clone(), ba.clone(), args.seed)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tap-a={} tap-b={}", a.name(), b.name())?;
        out.flush()?;
    }
    tracing::info!(?ab, ?ba, "forwarding between {} and {}", a.name(), b.name());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let stopped = rt.block_on(wait_for_stop(args.duration, &emulator));
    let report = serde_json::json!({ "directions": emulator.report() });
    println!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    stopped
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        // Forwarding threads are blocked in reads; leaving main ends them
        // and closing the descriptors removes the TAP devices.
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strato-wanem: {e:#}");
            ExitCode::FAILURE
        }
    }
}
