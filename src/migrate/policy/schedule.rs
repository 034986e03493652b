//! Bandwidth schedules: how fast the pre-copy phase may send.
//!
//! The copy (stop-and-copy) phase always uses the whole link: the service
//! is down, so there is nothing left to protect (paper 002, footnote 1).

use serde::Serialize;

use super::adaptive::SharedRate;

/// What a schedule may look at when it picks a rate.
#[derive(Debug, Clone, Copy)]
pub struct ScheduleInput {
    /// Pre-copy round, from 1.
    pub round: u32,
    /// Pages whose latest contents the destination already holds.
    pub clean_pages: u64,
    /// B: the link's capacity, Mbit/s.
    pub link_mbps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Schedule {
    /// The whole link every round (QEMU/KVM with no max-bandwidth).
    Unlimited,
    /// Clark et al.'s dynamic rate limiting as XEN-basic in paper 002 §5:
    /// start at `start_mbps`, add `step_mbps` per round, no maximum but
    /// the link.
    XenBasic { start_mbps: f64, step_mbps: f64 },
    /// One rate for the whole pre-copy phase: CALM-fixed's optimal B_m
    /// (paper 002 §4) or an operator's choice.
    Fixed { mbps: f64 },
    /// CALM-adaptive (paper 002 §5): rate B_i for the step that takes the
    /// destination from i−1 to i clean pages; `rates_mbps[i-1]` is B_i.
    PerStep {
        #[serde(skip)]
        rates_mbps: Vec<f32>,
    },
    /// CALM-adaptive online (`adaptive::CalmAdaptive`): the per-step plan
    /// until the first round ends, then the rate the policy re-planned.
    Adaptive {
        #[serde(skip)]
        initial_mbps: Vec<f32>,
        current: SharedRate,
    },
}

impl Schedule {
    /// XEN-basic with the paper's values: 100 Mbit/s, +50 Mbit/s per round.
    pub fn xen_basic() -> Self {
        Schedule::XenBasic {
            start_mbps: 100.0,
            step_mbps: 50.0,
        }
    }

    /// Rate for the pages sent now, Mbit/s, never above the link.
    pub fn rate_mbps(&self, input: ScheduleInput) -> f64 {
        let link = input.link_mbps;
        let r = match self {
            Schedule::Unlimited => link,
            Schedule::XenBasic {
                start_mbps,
                step_mbps,
            } => start_mbps + step_mbps * f64::from(input.round.saturating_sub(1)),
            Schedule::Fixed { mbps } => *mbps,
            Schedule::PerStep { rates_mbps } => per_step(rates_mbps, input),
            Schedule::Adaptive {
                initial_mbps,
                current,
            } => current
                .get()
                .unwrap_or_else(|| per_step(initial_mbps, input)),
        };
        r.clamp(f64::MIN_POSITIVE, link)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Unlimited => "unlimited",
            Schedule::XenBasic { .. } => "xen-basic",
            Schedule::Fixed { .. } => "fixed",
            Schedule::PerStep { .. } => "per-step",
            Schedule::Adaptive { .. } => "adaptive",
        }
    }
}

/// B_i for the step out of the current clean-page count. Past the planned
/// stop point the stop policy ends the pre-copy; until it does, keep the
/// last planned rate.
fn per_step(rates_mbps: &[f32], input: ScheduleInput) -> f64 {
    let i = usize::try_from(input.clean_pages).unwrap_or(usize::MAX);
    match rates_mbps.get(i).or(rates_mbps.last()) {
        Some(r) => f64::from(*r),
        None => input.link_mbps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(round: u32, clean: u64) -> ScheduleInput {
        ScheduleInput {
            round,
            clean_pages: clean,
            link_mbps: 256.0,
        }
    }

    #[test]
    fn xen_basic_ramps_to_the_link() {
        let s = Schedule::xen_basic();
        assert_eq!(s.rate_mbps(at(1, 0)), 100.0);
        assert_eq!(s.rate_mbps(at(3, 0)), 200.0);
        assert_eq!(s.rate_mbps(at(9, 0)), 256.0);
    }

    #[test]
    fn per_step_follows_clean_pages() {
        let s = Schedule::PerStep {
            rates_mbps: vec![10.0, 20.0, 30.0],
        };
        assert_eq!(s.rate_mbps(at(1, 0)), 10.0);
        assert_eq!(s.rate_mbps(at(1, 2)), 30.0);
        assert_eq!(s.rate_mbps(at(1, 99)), 30.0);
    }
}
