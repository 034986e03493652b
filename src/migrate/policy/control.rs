//! Policies on a real QEMU migration over QMP: the same bandwidth
//! schedules and stop policies the simulator uses, applied per pre-copy
//! round of QEMU's own migration.
//!
//! QEMU starts a new round (a dirty-bitmap sync) whenever it finished the
//! previous one; `query-migrate` reports the count as `dirty-sync-count`
//! and what is left as `ram.remaining`. When the count moves, the
//! controller hands the ended round to the stop policy and then:
//! - Continue: sets the next round's `max-bandwidth` from the schedule;
//! - Stop: sets `downtime-limit` to its maximum and `max-bandwidth` to the
//!   link, so QEMU switches over at once and copies the rest at full rate;
//! - Abort: `migrate_cancel`; the guest keeps running at the source.
//!
//! Until the policy says stop, `downtime-limit` is held at 1 ms, so QEMU
//! switches over on its own only when almost nothing is left to copy.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use thiserror::Error;

use super::cost::CostFunction;
use super::schedule::{Schedule, ScheduleInput};
use super::stop::{RoundObservation, StopDecision, StopPolicy};
use crate::qemu::qmp::{QmpClient, QmpError};

/// QEMU's largest accepted `downtime-limit`, ms.
const MAX_DOWNTIME_LIMIT_MS: u64 = 2_000_000;
/// Held while the policy wants more rounds: QEMU switches over when what
/// is left fits in downtime-limit at its measured bandwidth. Not 0: QEMU
/// then skips its exact dirty-page count and switches over as soon as a
/// round's own pages are sent.
const HOLD_DOWNTIME_LIMIT_MS: u64 = 1;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("migration did not finish within {0:?}")]
    Timeout(Duration),
    #[error("invalid controller setting: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// B: the link's capacity, Mbit/s (the copy phase's rate).
    pub link_mbps: f64,
    /// How often `query-migrate` is polled.
    pub poll: Duration,
    /// Bound on the whole migration.
    pub timeout: Duration,
    pub cost: CostFunction,
    /// QEMU's own page deltas (xbzrle) with this cache size in bytes, for
    /// comparing them with strato's codec; None leaves the capability alone.
    pub xbzrle_cache_bytes: Option<u64>,
}

/// One pre-copy round as the controller saw and shaped it.
#[derive(Debug, Clone, Serialize)]
pub struct ControlRound {
    pub round: u32,
    /// The `max-bandwidth` set for this round, and QEMU's value read back.
    pub rate_mbps: f64,
    pub max_bandwidth_set: u64,
    pub max_bandwidth_read: u64,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub seconds: f64,
    pub decision: StopDecision,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlReport {
    /// QEMU's final status: completed, failed or cancelled.
    pub status: String,
    pub schedule: &'static str,
    pub stop_policy: &'static str,
    pub rounds: Vec<ControlRound>,
    /// The round after which the policy stopped (None: QEMU converged
    /// by itself or the policy aborted).
    pub stop_round: Option<u32>,
    pub aborted: bool,
    /// QEMU's reported downtime and total time, ms.
    pub downtime_ms: Option<u64>,
    pub total_time_ms: Option<u64>,
    /// RAM bytes QEMU put on the wire.
    pub transferred_bytes: u64,
    /// ∫F(B − B_m)dt over the rounds plus QEMU's downtime at F(0) = 1.
    pub sla_cost: f64,
}

fn mbps_to_bytes(mbps: f64) -> u64 {
    (mbps * 1e6 / 8.0).round().max(1.0) as u64
}

async fn set_params(
    qmp: &mut QmpClient,
    max_bandwidth: Option<u64>,
    downtime_ms: Option<u64>,
) -> Result<(), QmpError> {
    let mut args = serde_json::Map::new();
    if let Some(b) = max_bandwidth {
        args.insert("max-bandwidth".into(), json!(b));
    }
    if let Some(d) = downtime_ms {
        args.insert("downtime-limit".into(), json!(d));
    }
    qmp.execute("migrate-set-parameters", Some(args.into()))
        .await?;
    Ok(())
}

async fn read_max_bandwidth(qmp: &mut QmpClient) -> Result<u64, QmpError> {
    let v = qmp.execute("query-migrate-parameters", None).await?;
    Ok(v["max-bandwidth"].as_u64().unwrap_or(0))
}

/// Start a migration to `uri` and drive it with `schedule` and `stop`.
pub async fn run(
    qmp: &mut QmpClient,
    uri: &str,
    schedule: &Schedule,
    stop: &mut dyn StopPolicy,
    cfg: &ControlConfig,
) -> Result<ControlReport, ControlError> {
    if !(cfg.link_mbps.is_finite() && cfg.link_mbps > 0.0) {
        return Err(ControlError::Invalid(format!(
            "link {} Mbit/s",
            cfg.link_mbps
        )));
    }
    let link = cfg.link_mbps;
    let mut round = 1u32;
    let mut rate = schedule.rate_mbps(ScheduleInput {
        round,
        clean_pages: 0,
        link_mbps: link,
    });
    set_params(qmp, Some(mbps_to_bytes(rate)), Some(HOLD_DOWNTIME_LIMIT_MS)).await?;
    if let Some(bytes) = cfg.xbzrle_cache_bytes {
        qmp.set_capabilities(&[("xbzrle", true)]).await?;
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "xbzrle-cache-size": bytes })),
        )
        .await?;
    }
    let mut readback = read_max_bandwidth(qmp).await?;
    qmp.migrate(uri).await?;
    let started = Instant::now();
    let mut round_start = started;
    let mut round_start_bytes = 0u64;
    let mut sent_pages_total = 0u64;
    let mut rounds = Vec::new();
    let mut stop_round = None;
    let mut aborted = false;
    let mut sla_cost = 0.0;
    let mut last_sync = 0u64;
    let info = loop {
        if started.elapsed() > cfg.timeout {
            // Leave nothing running behind a failed controller.
            let _ = qmp.execute("migrate_cancel", None).await;
            return Err(ControlError::Timeout(cfg.timeout));
        }
        let info = qmp.query_migrate().await?;
        if info.is_finished() {
            break info;
        }
        let Some(ram) = info.ram.clone() else {
            tokio::time::sleep(cfg.poll).await;
            continue;
        };
        // The first sync starts round 1; each later one ends a round.
        if ram.dirty_sync_count > last_sync && last_sync >= 1 && stop_round.is_none() && !aborted {
            let page = ram.page_size.max(1);
            let now = Instant::now();
            let secs = (now - round_start).as_secs_f64();
            let bytes = ram.transferred.saturating_sub(round_start_bytes);
            sent_pages_total += bytes / page;
            let obs = RoundObservation {
                round,
                remaining_pages: ram.remaining / page,
                total_pages: (ram.total / page).max(1),
                page_size: page as usize,
                pages_sent_total: sent_pages_total,
                round_pages: bytes / page,
                round_wire_bytes: bytes,
                round_seconds: secs,
                link_mbps: link,
            };
            let decision = stop.observe(&obs);
            sla_cost += secs * cfg.cost.f(link - rate);
            rounds.push(ControlRound {
                round,
                rate_mbps: rate,
                max_bandwidth_set: mbps_to_bytes(rate),
                max_bandwidth_read: readback,
                transferred_bytes: bytes,
                remaining_bytes: ram.remaining,
                seconds: secs,
                decision,
            });
            tracing::info!(
                round,
                rate,
                remaining = ram.remaining,
                ?decision,
                "pre-copy round ended"
            );
            match decision {
                StopDecision::Continue => {
                    round += 1;
                    rate = schedule.rate_mbps(ScheduleInput {
                        round,
                        clean_pages: obs.total_pages.saturating_sub(obs.remaining_pages),
                        link_mbps: link,
                    });
                    set_params(qmp, Some(mbps_to_bytes(rate)), None).await?;
                    readback = read_max_bandwidth(qmp).await?;
                }
                StopDecision::Stop => {
                    stop_round = Some(round);
                    set_params(qmp, Some(mbps_to_bytes(link)), Some(MAX_DOWNTIME_LIMIT_MS)).await?;
                }
                StopDecision::Abort => {
                    aborted = true;
                    qmp.execute("migrate_cancel", None).await?;
                }
            }
            round_start = now;
            round_start_bytes = ram.transferred;
        }
        last_sync = last_sync.max(ram.dirty_sync_count);
        tokio::time::sleep(cfg.poll).await;
    };
    if stop_round.is_none() && !aborted {
        // QEMU converged by itself: the last round ran until completion.
        let secs = round_start.elapsed().as_secs_f64();
        sla_cost += secs * cfg.cost.f(link - rate);
    }
    if let Some(d) = info.downtime {
        sla_cost += d as f64 / 1000.0; // F(0) = 1 while the guest is paused
    }
    Ok(ControlReport {
        status: info.status.clone(),
        schedule: schedule.name(),
        stop_policy: stop.name(),
        rounds,
        stop_round,
        aborted,
        downtime_ms: info.downtime,
        total_time_ms: info.total_time,
        transferred_bytes: info.ram.as_ref().map_or(0, |r| r.transferred),
        sla_cost,
    })
}
