//! The policy presets `strato migrate simulate|plan|control` offer: each is
//! a bandwidth schedule and a stop policy, with their parameters from the
//! `--params` TOML file. Shared by the simulator and the live controller,
//! so a preset means the same in both.

use serde::{Deserialize, Serialize};

use super::adaptive::{CalmAdaptive, SharedRate};
use super::cost::{CostFunction, PageModel};
use super::plan::{self, PlanOutcome};
use super::schedule::Schedule;
use super::sim::DirtyModel;
use super::stop::{KvmDowntime, PlannedStop, SmartStop, StopPolicy, XenDefault};
use crate::migrate::codec::rcache::CodecConfig;

/// Policy presets: a bandwidth schedule and a stop policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Whole link, Xen's default stop (30 rounds, 3 x memory, 256 KiB left)
    Xen,
    /// XEN-basic (100 Mbit/s + 50 per round) with Xen's stop (paper 002 §5)
    XenBasic,
    /// Whole link, KVM's stop at the expected downtime limit
    Kvm,
    /// Whole link, CloudNet's smart stop (window of 5 rounds)
    Smart,
    /// CALM-fixed: the optimal fixed B_m and stop point (paper 002 §4)
    CalmFixed,
    /// CALM-adaptive: optimal B_i per step and stop point (paper 002 §5)
    CalmAdaptive,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Xen => "xen",
            Policy::XenBasic => "xen-basic",
            Policy::Kvm => "kvm",
            Policy::Smart => "smart",
            Policy::CalmFixed => "calm-fixed",
            Policy::CalmAdaptive => "calm-adaptive",
        }
    }
}

/// Parameters from `--params FILE` (TOML); every table is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// F(B_s) of eq. (1).
    pub cost: CostFunction,
    pub xen: XenDefault,
    pub xen_basic: XenBasicParams,
    pub kvm: KvmDowntime,
    pub smart: SmartStop,
    pub calm: CalmParams,
    /// Codec knobs (page size, cache size, delta threshold ...); the
    /// --cbr/--delta/--zstd flags switch the optimisations on.
    pub codec: Option<CodecConfig>,
    /// A custom dirtying model instead of a --workload preset.
    pub workload: Option<DirtyModel>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XenBasicParams {
    pub start_mbps: f64,
    pub step_mbps: f64,
}

impl Default for XenBasicParams {
    fn default() -> Self {
        XenBasicParams {
            start_mbps: 100.0,
            step_mbps: 50.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalmParams {
    /// Rounds without a new minimum of remaining pages before CALM stops
    /// anyway (real workloads are not uniform).
    pub stall_window: usize,
    pub max_rounds: u32,
}

impl Default for CalmParams {
    fn default() -> Self {
        CalmParams {
            stall_window: 3,
            max_rounds: 30,
        }
    }
}

pub type PolicyParts = (Schedule, Box<dyn StopPolicy>, Option<PlanOutcome>);

/// The schedule and stop policy of a preset (CALM ones planned on `model`).
pub fn policy_parts(
    policy: Policy,
    params: &Params,
    model: &PageModel,
    pages: u64,
    link: f64,
) -> PolicyParts {
    let calm_stop = |n: u64| -> Box<dyn StopPolicy> {
        let mut s = PlannedStop::new(n);
        s.stall_window = params.calm.stall_window;
        s.max_rounds = params.calm.max_rounds;
        Box::new(s)
    };
    match policy {
        Policy::Xen => (Schedule::Unlimited, Box::new(params.xen), None),
        Policy::XenBasic => (
            Schedule::XenBasic {
                start_mbps: params.xen_basic.start_mbps,
                step_mbps: params.xen_basic.step_mbps,
            },
            Box::new(params.xen),
            None,
        ),
        Policy::Kvm => (Schedule::Unlimited, Box::new(params.kvm), None),
        Policy::Smart => (Schedule::Unlimited, Box::new(params.smart.clone()), None),
        Policy::CalmFixed => {
            let pl = plan::calm_fixed(model);
            let s = Schedule::Fixed {
                mbps: pl.rates_mbps.first().copied().unwrap_or(link),
            };
            (s, calm_stop(pl.clean_pages_at_stop), Some(pl))
        }
        Policy::CalmAdaptive => {
            // The first round follows the whole-memory plan; after each
            // round the policy applies §5's rule to the pages still dirty.
            let pl = plan::calm_adaptive(model, pages);
            let current = SharedRate::unset();
            let s = Schedule::Adaptive {
                initial_mbps: pl.rates_mbps.iter().map(|r| *r as f32).collect(),
                current: current.clone(),
            };
            let mut stop = CalmAdaptive::new(link, model.page_size, model.cost, current);
            stop.max_rounds = params.calm.max_rounds;
            (s, Box::new(stop), Some(pl))
        }
    }
}
