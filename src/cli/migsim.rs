//! `strato migrate simulate` and `strato migrate plan`: migration policies
//! (CloudNet, CALM) in the trace-driven simulator and the planner. The live
//! engine's `migrate send|recv` lives in cli/migrate.rs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use strato::migrate::codec::rcache::CodecConfig;
use strato::migrate::policy::cost::{CostFunction, PageModel};
use strato::migrate::policy::plan::{self, PlanOutcome};
use strato::migrate::policy::preset::{policy_parts, Params, Policy};
use strato::migrate::policy::sim::{self, DirtyModel, Reconnect, SimReport, SimSpec, Writes};

use super::Ctx;

#[derive(Subcommand, Debug)]
pub enum MigsimCmd {
    /// Replay a pre-copy migration (memory image + page writes) through the
    /// real page codec at a simulated link rate, with a schedule and a stop policy
    Simulate(SimulateArgs),
    /// Print the bandwidth schedule each policy would use and its predicted
    /// SLA cost, total time and downtime (CALM, paper 002 eq. 1–3)
    Plan(PlanArgs),
    /// Start a real QEMU migration over QMP and apply a policy to it: per-round
    /// max-bandwidth from the schedule, switchover (downtime-limit) when the
    /// stop policy says so, migrate_cancel on abort
    Control(ControlArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReconnectArg {
    Both,
    ReceiverOnly,
}

/// What both commands need to describe a migration.
#[derive(Args, Debug)]
pub struct MigrationArgs {
    /// Guest memory, MiB (ignored with --image)
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Link capacity B, Mbit/s
    #[arg(long, default_value_t = 100.0)]
    link_mbps: f64,
    /// Dirtying workload preset: web (≈1 % hot pages), memory-heavy, idle
    #[arg(long, default_value = "web")]
    workload: String,
    /// Page-write trace (`TIME_S PAGE [OFFSET LEN]` per line) instead of a workload model
    #[arg(long)]
    trace: Option<PathBuf>,
    /// TOML file with cost, stop, schedule, codec and workload parameters
    #[arg(long)]
    params: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    m: MigrationArgs,
    /// Schedule and stop policy
    #[arg(long, value_enum, default_value = "xen")]
    policy: Policy,
    /// Raw memory image to migrate (default: synthetic memory of --memory-mib)
    #[arg(long)]
    image: Option<PathBuf>,
    /// Round-trip time, milliseconds (one per round, and one in the downtime)
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// Content-based redundancy cache (CloudNet §4.2)
    #[arg(long)]
    cbr: bool,
    /// Sub-page blocks per page for the cache
    #[arg(long)]
    blocks_per_page: Option<usize>,
    /// Page deltas: XOR + run-length (CloudNet §4.3)
    #[arg(long)]
    delta: bool,
    /// Largest delta worth sending, bytes
    #[arg(long)]
    delta_threshold: Option<usize>,
    /// zstd level for page frames
    #[arg(long)]
    zstd: Option<i32>,
    /// Seed for the synthetic memory and the dirtying model
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds after which the copy phase starts regardless
    #[arg(long, default_value_t = 3600.0)]
    max_seconds: f64,
    /// Simulate a reconnect at the start of this round
    #[arg(long)]
    reconnect_at_round: Option<u32>,
    /// Which ends lose their codec state at the reconnect
    #[arg(long, value_enum, default_value = "both")]
    reconnect: ReconnectArg,
    /// Write the final source memory here
    #[arg(long)]
    source_out: Option<PathBuf>,
    /// Write the rebuilt destination memory here
    #[arg(long)]
    dest_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    m: MigrationArgs,
    /// Memory in pages instead of MiB (small cases)
    #[arg(long)]
    pages: Option<u64>,
    /// p: probability a page is written within one second (default: estimated from the workload)
    #[arg(long)]
    dirty_prob: Option<f64>,
    /// Print CALM-adaptive's rate for every step (JSON: all of them)
    #[arg(long)]
    steps: bool,
}

pub fn migsim(ctx: &Ctx, cmd: MigsimCmd) -> Result<std::process::ExitCode> {
    match cmd {
        MigsimCmd::Simulate(a) => simulate(ctx, a),
        MigsimCmd::Plan(a) => plan_cmd(ctx, a),
        MigsimCmd::Control(a) => control(ctx, a),
    }
}

#[derive(Args, Debug)]
pub struct ControlArgs {
    #[command(flatten)]
    m: MigrationArgs,
    /// Schedule and stop policy
    #[arg(long, value_enum, default_value = "xen")]
    policy: Policy,
    /// QMP socket of the source QEMU (a free monitor: QMP takes one client per socket)
    #[arg(long)]
    qmp: PathBuf,
    /// Migration URI for QEMU's `migrate` (e.g. tcp:HOST:PORT, unix:PATH, exec:CMD)
    #[arg(long)]
    uri: String,
    /// p for the CALM planner (default: estimated from --workload)
    #[arg(long)]
    dirty_prob: Option<f64>,
    /// query-migrate polling interval, milliseconds
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// Turn on QEMU's xbzrle page deltas with this cache size, MiB (a baseline for strato's codec)
    #[arg(long)]
    xbzrle_cache_mib: Option<u64>,
    /// Give up (and cancel the migration) after this many seconds
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[derive(Serialize)]
struct ControlOutput {
    policy: &'static str,
    link_mbps: f64,
    plan: Option<PlanOutcome>,
    report: strato::migrate::policy::control::ControlReport,
}

fn control(ctx: &Ctx, a: ControlArgs) -> Result<std::process::ExitCode> {
    use strato::migrate::policy::control::{self, ControlConfig};
    use strato::qemu::qmp::QmpClient;
    let params = load_params(a.m.params.as_ref())?;
    check_link(a.m.link_mbps)?;
    if a.uri.is_empty() {
        bail!("--uri must name the migration destination");
    }
    if a.poll_ms == 0 || a.timeout_s == 0 {
        bail!("--poll-ms and --timeout-s must be at least 1");
    }
    let ps = 4096;
    let pages = memory_pages(a.m.memory_mib, ps)?;
    let p = match a.dirty_prob {
        Some(p) if p > 0.0 && p < 1.0 => p,
        Some(p) => bail!("--dirty-prob must be in (0, 1), got {p}"),
        None => workload(&a.m, &params, pages, ps)?.1,
    };
    let model = page_model(pages, ps, a.m.link_mbps, p, params.cost)?;
    let (schedule, mut stop, planned) =
        policy_parts(a.policy, &params, &model, pages, a.m.link_mbps);
    let cfg = ControlConfig {
        link_mbps: a.m.link_mbps,
        poll: std::time::Duration::from_millis(a.poll_ms),
        timeout: std::time::Duration::from_secs(a.timeout_s),
        cost: params.cost,
        xbzrle_cache_bytes: a.xbzrle_cache_mib.map(|m| m << 20),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(async {
        let mut qmp = QmpClient::connect(&a.qmp, std::time::Duration::from_secs(30))
            .await
            .with_context(|| format!("connecting to QMP at {}", a.qmp.display()))?;
        control::run(&mut qmp, &a.uri, &schedule, stop.as_mut(), &cfg)
            .await
            .context("controlling the migration")
    })?;
    let ok = report.status == "completed" || report.aborted;
    let out = ControlOutput {
        policy: a.policy.name(),
        link_mbps: a.m.link_mbps,
        plan: planned.map(|mut pl| {
            pl.rates_mbps.truncate(16);
            pl
        }),
        report,
    };
    if ctx.json {
        ctx.print_json(&out)?;
    } else {
        let r = &out.report;
        println!(
            "policy {} ({} schedule, {} stop): QEMU status {}",
            out.policy, r.schedule, r.stop_policy, r.status
        );
        println!(
            "{:>5} {:>10} {:>14} {:>12} {:>12} {:>8} {:>9}",
            "round", "Mbit/s", "max-bandwidth", "sent MiB", "left MiB", "seconds", "decision"
        );
        for c in &r.rounds {
            println!(
                "{:>5} {:>10.1} {:>14} {:>12.2} {:>12.2} {:>8.2} {:>9}",
                c.round,
                c.rate_mbps,
                c.max_bandwidth_read,
                mib(c.transferred_bytes),
                mib(c.remaining_bytes),
                c.seconds,
                format!("{:?}", c.decision).to_lowercase()
            );
        }
        println!(
            "stop round {:?}, aborted {}, downtime {:?} ms, total {:?} ms, SLA cost {:.4}",
            r.stop_round, r.aborted, r.downtime_ms, r.total_time_ms, r.sla_cost
        );
    }
    if !ok {
        bail!("migration ended {}", out.report.status);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn load_params(path: Option<&PathBuf>) -> Result<Params> {
    let Some(p) = path else {
        return Ok(Params::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let params: Params =
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    params.cost.validate()?;
    Ok(params)
}

fn check_link(link_mbps: f64) -> Result<()> {
    if !(link_mbps.is_finite() && link_mbps > 0.0) {
        bail!("--link-mbps must be a positive number, got {link_mbps}");
    }
    Ok(())
}

fn memory_pages(memory_mib: u64, page_size: usize) -> Result<u64> {
    if memory_mib == 0 || memory_mib > 64 * 1024 {
        bail!("--memory-mib must be in 1..=65536, got {memory_mib}");
    }
    Ok(memory_mib * (1 << 20) / page_size as u64)
}

fn workload(
    m: &MigrationArgs,
    params: &Params,
    pages: u64,
    page_size: usize,
) -> Result<(Writes, f64)> {
    if let Some(t) = &m.trace {
        let text =
            std::fs::read_to_string(t).with_context(|| format!("reading trace {}", t.display()))?;
        let tr = sim::parse_trace(&text, pages, page_size)
            .with_context(|| format!("trace {}", t.display()))?;
        let p = sim::trace_dirty_prob(&tr, pages);
        return Ok((Writes::Trace(tr), p));
    }
    let model = match &params.workload {
        Some(w) => w.clone(),
        None => DirtyModel::preset(&m.workload).with_context(|| {
            format!(
                "unknown --workload {:?}: use web, memory-heavy or idle",
                m.workload
            )
        })?,
    };
    let p = model.dirty_prob(pages);
    Ok((Writes::Model(model), p))
}

fn page_model(
    pages: u64,
    page_size: usize,
    link: f64,
    p: f64,
    cost: CostFunction,
) -> Result<PageModel> {
    // The model needs 0 < p < 1; an idle guest still dirties something.
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    Ok(PageModel::new(pages, page_size, link, p, cost)?)
}

fn simulate(ctx: &Ctx, a: SimulateArgs) -> Result<std::process::ExitCode> {
    let params = load_params(a.m.params.as_ref())?;
    check_link(a.m.link_mbps)?;
    if !(a.rtt_ms.is_finite() && a.rtt_ms >= 0.0) {
        bail!("--rtt-ms must be >= 0, got {}", a.rtt_ms);
    }
    let mut codec = params.codec.clone().unwrap_or_else(CodecConfig::plain);
    codec.cbr = a.cbr;
    codec.delta = a.delta;
    codec.zstd_level = a.zstd;
    if let Some(b) = a.blocks_per_page {
        codec.blocks_per_page = b;
    }
    if let Some(t) = a.delta_threshold {
        codec.delta_threshold = t;
    }
    codec.validate()?;
    let ps = codec.page_size;
    let memory = match &a.image {
        Some(p) => sim::load_memory(p, ps)?,
        None => sim::synth_memory(memory_pages(a.m.memory_mib, ps)?, ps, a.seed),
    };
    let pages = (memory.len() / ps) as u64;
    let (writes, p) = workload(&a.m, &params, pages, ps)?;
    let model = page_model(pages, ps, a.m.link_mbps, p, params.cost)?;
    let (schedule, stop, planned) = policy_parts(a.policy, &params, &model, pages, a.m.link_mbps);
    let spec = SimSpec {
        memory,
        writes,
        link_mbps: a.m.link_mbps,
        rtt_s: a.rtt_ms / 1000.0,
        codec: codec.clone(),
        schedule,
        stop,
        cost: params.cost,
        seed: a.seed,
        max_seconds: a.max_seconds,
        reconnect: a.reconnect_at_round.map(|r| {
            (
                r,
                match a.reconnect {
                    ReconnectArg::Both => Reconnect::Both,
                    ReconnectArg::ReceiverOnly => Reconnect::ReceiverOnly,
                },
            )
        }),
    };
    let (report, src, dst) = sim::simulate_with_images(spec)?;
    if let Some(p) = &a.source_out {
        std::fs::write(p, &src).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.dest_out {
        std::fs::write(p, &dst).with_context(|| format!("writing {}", p.display()))?;
    }
    let out = SimOutput {
        policy: a.policy.name(),
        pages,
        page_size: ps,
        link_mbps: a.m.link_mbps,
        rtt_ms: a.rtt_ms,
        dirty_prob: p,
        codec,
        plan: planned.map(|mut pl| {
            pl.rates_mbps.truncate(16);
            pl
        }),
        report,
    };
    ctx.emit(&out, || {
        print_sim(&out);
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct SimOutput {
    policy: &'static str,
    pages: u64,
    page_size: usize,
    link_mbps: f64,
    rtt_ms: f64,
    dirty_prob: f64,
    codec: CodecConfig,
    /// The planner's prediction (CALM policies); rates cut to 16 entries.
    plan: Option<PlanOutcome>,
    report: SimReport,
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1u32 << 20)
}

fn print_sim(o: &SimOutput) {
    let r = &o.report;
    println!(
        "policy {} ({} schedule, {} stop) | {} pages of {} B | link {} Mbit/s, rtt {} ms | p = {:.4}/s",
        o.policy, r.schedule, r.stop_policy, o.pages, o.page_size, o.link_mbps, o.rtt_ms, o.dirty_prob
    );
    println!(
        "{:>5} {:>9} {:>8} {:>10} {:>9} {:>10} {:>10} {:>9}",
        "round", "pages", "skipped", "MiB", "seconds", "Mbit/s", "remaining", "decision"
    );
    for rr in &r.rounds {
        println!(
            "{:>5} {:>9} {:>8} {:>10.2} {:>9.3} {:>10.1} {:>10} {:>9}",
            rr.round,
            rr.pages_sent,
            rr.pages_skipped,
            mib(rr.wire_bytes),
            rr.seconds,
            rr.mean_rate_mbps,
            rr.remaining_pages,
            format!("{:?}", rr.decision).to_lowercase()
        );
    }
    println!(
        "outcome {:?}, stop round {}, total {:.3} s, downtime {:.4} s ({} pages), SLA cost {:.4}",
        r.outcome, r.stop_round, r.total_time_s, r.downtime_s, r.downtime_pages, r.sla_cost
    );
    let b = &r.bytes;
    println!(
        "data: {:.2} MiB on the wire for {:.2} MiB of pages; saved {:.2} MiB by cache ({} hits), {:.2} MiB by deltas, {:.2} MiB by zstd",
        mib(b.wire_bytes),
        mib(b.raw_bytes),
        mib(b.saved_by_cache),
        b.cache_hits,
        mib(b.saved_by_delta),
        mib(b.saved_by_zstd)
    );
    println!(
        "frames: {} raw, {} blocks, {} delta; {} writes replayed; {} codec resyncs; verified: {}",
        b.frames_raw,
        b.frames_blocks,
        b.frames_delta,
        r.writes_applied,
        r.resyncs,
        match r.verified {
            Some(true) => "destination == source",
            Some(false) => "MISMATCH",
            None => "n/a (aborted)",
        }
    );
}

#[derive(Serialize)]
struct PlanOutput {
    pages: u64,
    page_size: usize,
    link_mbps: f64,
    dirty_prob: f64,
    cost: CostFunction,
    plans: Vec<PlanOutcome>,
}

fn plan_cmd(ctx: &Ctx, a: PlanArgs) -> Result<std::process::ExitCode> {
    let params = load_params(a.m.params.as_ref())?;
    check_link(a.m.link_mbps)?;
    let ps = params.codec.as_ref().map_or(4096, |c| c.page_size);
    let pages = match a.pages {
        Some(0) => bail!("--pages must be at least 1"),
        Some(n) => n,
        None => memory_pages(a.m.memory_mib, ps)?,
    };
    let p = match a.dirty_prob {
        Some(p) if p > 0.0 && p < 1.0 => p,
        Some(p) => bail!("--dirty-prob must be in (0, 1), got {p}"),
        None => workload(&a.m, &params, pages, ps)?.1,
    };
    let model = page_model(pages, ps, a.m.link_mbps, p, params.cost)?;
    let xen_stop_pages = params.xen.min_remaining_bytes as f64 / ps as f64;
    let mut plans = vec![
        plan::xen_basic(
            &model,
            params.xen_basic.start_mbps,
            params.xen_basic.step_mbps,
            xen_stop_pages,
            params.xen.max_rounds,
            params.xen.max_sent_factor,
        ),
        plan::calm_fixed(&model),
        plan::calm_adaptive(&model, pages),
    ];
    if ctx.json {
        if !a.steps {
            for pl in &mut plans {
                pl.rates_mbps.truncate(64);
            }
        }
        ctx.print_json(&PlanOutput {
            pages,
            page_size: ps,
            link_mbps: a.m.link_mbps,
            dirty_prob: p,
            cost: params.cost,
            plans,
        })?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{} pages of {} B, link {} Mbit/s, p = {:.6}/s, F(B_s) = e^({} * ({} - B_s/{}))",
        pages,
        ps,
        a.m.link_mbps,
        p,
        params.cost.t_sla_s,
        params.cost.arrival_rate,
        params.cost.response_mbit
    );
    println!(
        "{:<14} {:>12} {:>12} {:>12} {:>12} {:>10}  schedule (Mbit/s)",
        "policy", "cost", "total s", "downtime s", "N clean", "rounds"
    );
    for pl in &plans {
        println!(
            "{:<14} {:>12.4} {:>12.3} {:>12.5} {:>12} {:>10}  {}",
            pl.policy,
            pl.cost,
            pl.total_time_s,
            pl.downtime_s,
            pl.clean_pages_at_stop,
            pl.rounds,
            describe_rates(&pl.rates_mbps, a.steps)
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn describe_rates(r: &[f64], all: bool) -> String {
    if r.is_empty() {
        return "none (copy everything while paused)".into();
    }
    if all || r.len() <= 8 {
        return r
            .iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" ");
    }
    let min = r.iter().copied().fold(f64::INFINITY, f64::min);
    let max = r.iter().copied().fold(0.0, f64::max);
    format!(
        "{} steps: first {:.1}, median {:.1}, last {:.1}, min {:.1}, max {:.1}",
        r.len(),
        r[0],
        r[r.len() / 2],
        r[r.len() - 1],
        min,
        max
    )
}
