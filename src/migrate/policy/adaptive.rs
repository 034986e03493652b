//! CALM-adaptive run online (paper 002 §5).
//!
//! The paper's algorithm walks steps i−1 → i clean pages, picks for each
//! the rate B_i minimising the step cost C_i, and stops before the first
//! step whose best C_i is at least 1/B, the cost of copying that page in
//! the copy phase instead. Theorem 1 makes this optimal when every page is
//! dirtied with the same probability p. Planned once from the whole
//! memory's average p, a real workload breaks it: its writable working set
//! (paper 002 §4: ≈1 % of the pages, written many times a second) never
//! becomes clean at the low rates the average suggests, so the plan's
//! target is never reached and the hot set is left for the copy phase.
//!
//! Here the first round follows the §5 plan for the whole memory, and
//! after every round the §5 stopping rule is applied to what was actually
//! observed: pre-copy continues only while cleaning pages live costs less
//! than copying them paused (1/B each). The dirtying rate λ of the pages
//! just sent is estimated from how many were dirty again at the round's
//! end; the next round at rate R would take T = D/R for the D dirty pages,
//! cost T·F(B − R), and leave D·g(λT) of them dirty (g below), to be
//! copied at 1/B each. The policy picks the R minimising that prediction
//! and continues only if it beats stopping now (D/B), i.e. only if the
//! pages the round cleans cost less than 1/B each. Pages already clean
//! that get dirty again (the rest of a hot set) are what a per-page rate
//! of the pages just sent misses: the shortfall of the last prediction is
//! kept as an inflow of dirty pages per second and added to the next one,
//! so a round that cannot beat the hot set's re-dirtying is not started. Pages that will stay
//! dirty (a hot set outrunning every affordable rate) make g ≈ 1, so the
//! policy stops at once instead of waiting for a stall; a hot set that a
//! fast link can outrun cheaply gets a short burst at a high rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::cost::{mbps_to_pps, pps_to_mbps, CostFunction};
use super::plan;
use super::stop::{RoundObservation, StopDecision, StopPolicy};

/// A rate the stop policy sets for the schedule's next round (Mbit/s);
/// unset until the first round ends.
#[derive(Debug, Clone)]
pub struct SharedRate(Arc<AtomicU64>);

impl SharedRate {
    pub fn unset() -> Self {
        SharedRate(Arc::new(AtomicU64::new(f64::NAN.to_bits())))
    }

    pub fn get(&self) -> Option<f64> {
        let v = f64::from_bits(self.0.load(Ordering::Relaxed));
        (!v.is_nan()).then_some(v)
    }

    pub fn set(&self, mbps: f64) {
        self.0.store(mbps.to_bits(), Ordering::Relaxed);
    }
}

impl PartialEq for SharedRate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Serialize for SharedRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

/// The online CALM-adaptive stop policy; it also sets the next round's
/// rate through the shared cell of a `Schedule::Adaptive`.
#[derive(Debug, Clone, Serialize)]
pub struct CalmAdaptive {
    pub link_mbps: f64,
    pub page_size: usize,
    pub cost: CostFunction,
    pub max_rounds: u32,
    #[serde(skip)]
    rate: SharedRate,
    #[serde(skip)]
    prev_remaining: Option<u64>,
    /// Pages the last decision predicted dirty after this round.
    #[serde(skip)]
    predicted: Option<f64>,
    /// Clean pages becoming dirty per second that the per-page estimate
    /// missed (last prediction's shortfall): the pages already clean that
    /// will not stay clean, e.g. the rest of a hot set.
    #[serde(skip)]
    inflow_pps: f64,
    /// The last decision's numbers.
    #[serde(skip)]
    pub last: Option<Replan>,
}

/// One re-plan's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Replan {
    pub dirty_pages: u64,
    pub dirty_prob: f64,
    pub continue_cost: f64,
    pub stop_cost: f64,
    pub next_rate_mbps: f64,
    /// Pages the prediction leaves dirty after the next round.
    pub dirty_after: f64,
}

impl CalmAdaptive {
    pub fn new(link_mbps: f64, page_size: usize, cost: CostFunction, rate: SharedRate) -> Self {
        CalmAdaptive {
            link_mbps,
            page_size,
            cost,
            max_rounds: 30,
            rate,
            prev_remaining: None,
            predicted: None,
            inflow_pps: 0.0,
            last: None,
        }
    }

    /// Writes per second per page of the pages dirty now (their dirtying
    /// probability in a second is 1 − e^(−λ)), from what the round saw. Of the pages it sent, those dirty again at
    /// its end were rewritten after being sent; a page sent at a uniform
    /// moment of a round of T seconds and written at rate λ is dirty at
    /// the end with probability g(λT) = 1 − (1 − e^(−λT))/(λT). Solving
    /// g(λT) = (dirty again)/(sent) gives λ, and p = 1 − e^(−λ). Unlike
    /// the raw count per second this is not capped at 1/T, so a hot set
    /// rewritten many times during a long round is seen as hot.
    fn observed_write_rate(&self, o: &RoundObservation) -> f64 {
        let before = self.prev_remaining.unwrap_or(o.total_pages);
        let left_over = before.saturating_sub(o.round_pages);
        let fresh = o.remaining_pages.saturating_sub(left_over);
        let t = o.round_seconds.max(1e-6);
        let lambda = if o.round_pages == 0 {
            fresh as f64 / (o.remaining_pages.max(1) as f64 * t)
        } else {
            let f = (fresh as f64 / o.round_pages as f64).min(1.0);
            solve_exposure(f) / t
        };
        lambda.min(1e9)
    }

    /// Predicted cost of one more round at `rate_pps` for `dirty` pages
    /// written at `lambda` per second: (round cost + copying what stays
    /// dirty, pages expected dirty after the round).
    fn round_cost(&self, dirty: f64, lambda: f64, rate_pps: f64) -> (f64, f64) {
        let link_pps = mbps_to_pps(self.link_mbps, self.page_size);
        let t = dirty / rate_pps;
        let residual = self.link_mbps - pps_to_mbps(rate_pps, self.page_size);
        let left = dirty * exposure(lambda * t) + self.inflow_pps * t;
        (t * self.cost.f(residual) + left / link_pps, left)
    }

    /// The §5 decision for the pages dirty now; `lambda`: their writes per
    /// second.
    pub fn replan(&self, dirty: u64, lambda: f64) -> Replan {
        let link_pps = mbps_to_pps(self.link_mbps, self.page_size);
        let d = dirty as f64;
        let cost_at = |r: f64| self.round_cost(d, lambda, r).0;
        let rate = plan::minimise(cost_at, link_pps * 1e-4, link_pps, 200);
        let (continue_cost, left) = self.round_cost(d, lambda, rate);
        Replan {
            dirty_pages: dirty,
            dirty_prob: -(-lambda).exp_m1(),
            continue_cost,
            stop_cost: d / link_pps,
            next_rate_mbps: pps_to_mbps(rate, self.page_size),
            dirty_after: left,
        }
    }
}

impl StopPolicy for CalmAdaptive {
    fn name(&self) -> &'static str {
        "calm-adaptive"
    }

    fn observe(&mut self, o: &RoundObservation) -> StopDecision {
        let lambda = self.observed_write_rate(o);
        self.prev_remaining = Some(o.remaining_pages);
        if let Some(x) = self.predicted.take() {
            self.inflow_pps = (o.remaining_pages as f64 - x).max(0.0) / o.round_seconds.max(1e-6);
        }
        if o.remaining_pages == 0 || o.round >= self.max_rounds {
            return StopDecision::Stop;
        }
        let r = self.replan(o.remaining_pages, lambda);
        self.last = Some(r);
        // Continue only where that is strictly cheaper (a relative margin:
        // rounding must not make chasing pages look free).
        if r.continue_cost < r.stop_cost * (1.0 - 1e-9) {
            self.rate.set(r.next_rate_mbps);
            self.predicted = Some(r.dirty_after);
            StopDecision::Continue
        } else {
            StopDecision::Stop
        }
    }
}

/// g(x) = 1 − (1 − e^(−x))/x: the chance that a page sent at a uniform
/// moment of a round is written again before the round ends, x = λT.
fn exposure(x: f64) -> f64 {
    if x < 1e-9 {
        x / 2.0
    } else {
        1.0 + (-x).exp_m1() / x
    }
}

/// x ≥ 0 with 1 − (1 − e^(−x))/x = f (f in [0, 1]; g rises from 0 to 1),
/// by bisection on a log scale; f = 1 gives the upper end.
fn solve_exposure(f: f64) -> f64 {
    let g = exposure;
    if f <= 0.0 {
        return 0.0;
    }
    let (mut lo, mut hi) = (1e-9f64, 1e9f64);
    if g(hi) <= f {
        return hi;
    }
    for _ in 0..200 {
        let mid = (lo * hi).sqrt();
        if g(mid) < f {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi / lo < 1.0 + 1e-9 {
            break;
        }
    }
    (lo * hi).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(round: u32, remaining: u64, sent: u64, secs: f64) -> RoundObservation {
        RoundObservation {
            round,
            remaining_pages: remaining,
            total_pages: 65_536,
            page_size: 4096,
            pages_sent_total: 0,
            round_pages: sent,
            round_wire_bytes: sent * 4096,
            round_seconds: secs,
            link_mbps: 1000.0,
        }
    }

    #[test]
    fn exposure_inverts() {
        for x in [1e-4, 0.1, 1.0, 7.0, 300.0] {
            let f = exposure(x);
            assert!((solve_exposure(f) - x).abs() < 1e-6 * x.max(1.0), "{x}");
        }
    }

    #[test]
    fn a_hot_set_on_a_fast_link_gets_a_burst() {
        let rate = SharedRate::unset();
        let mut c = CalmAdaptive::new(1000.0, 4096, CostFunction::default(), rate.clone());
        // Round 1 sent everything slowly; 1 % of the pages (the hot set)
        // are dirty at its end, which looks like a slow rate per page.
        assert_eq!(
            c.observe(&obs(1, 655, 65_536, 100.0)),
            StopDecision::Continue
        );
        let f = CostFunction::default().f(1000.0 - rate.get().unwrap());
        assert!(f < 1e-3, "{:?}", c.last);
        // Round 2 sent those 655 pages in 30 ms at that rate and 300 are
        // dirty again: a hot set (p' ≈ 1), and more than predicted (the
        // shortfall becomes inflow). A round faster still cleans more of
        // it than comes back, at a cost far below copying them paused.
        assert_eq!(c.observe(&obs(2, 300, 655, 0.03)), StopDecision::Continue);
        let r = c.last.unwrap();
        assert!(r.dirty_prob > 0.99, "{r:?}");
        assert!(r.continue_cost < r.stop_cost, "{r:?}");
        assert!(r.dirty_after < 300.0, "{r:?}");
        let next = rate.get().unwrap();
        assert!(next > 200.0 && next <= 1000.0, "{next}");
        // Nothing left: stop.
        assert_eq!(c.observe(&obs(3, 0, 655, 0.03)), StopDecision::Stop);
    }

    #[test]
    fn a_hot_set_that_cannot_be_cleaned_is_copied_at_once() {
        let rate = SharedRate::unset();
        let mut c = CalmAdaptive::new(256.0, 4096, CostFunction::default(), rate.clone());
        c.observe(&obs(1, 655, 65_536, 100.0));
        // At 256 Mbit/s no rate cleans pages written every 50 ms while
        // leaving the service its bandwidth: the plan for them costs at
        // least copying them paused, so the policy stops now instead of
        // chasing them round after round.
        assert_eq!(c.observe(&obs(2, 655, 655, 2.7)), StopDecision::Stop);
        let r = c.last.unwrap();
        assert!(r.continue_cost >= r.stop_cost * (1.0 - 1e-9), "{r:?}");
    }

    #[test]
    fn cold_pages_left_are_sent_leaving_the_service_its_bandwidth() {
        let rate = SharedRate::unset();
        let mut c = CalmAdaptive::new(1000.0, 4096, CostFunction::default(), rate.clone());
        // 5000 pages dirtied over a 100 s round: written rarely, so one
        // more round cleans most of them; it runs fast, but not so fast
        // that the service's residual bandwidth costs SLA violations.
        assert_eq!(
            c.observe(&obs(1, 5_000, 65_536, 100.0)),
            StopDecision::Continue
        );
        let next = rate.get().unwrap();
        assert!(CostFunction::default().f(1000.0 - next) < 1e-4, "{next}");
        let r = c.last.unwrap();
        assert!(r.dirty_after < 50.0, "{r:?}");
    }
}
