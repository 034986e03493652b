//! The CALM cost model (Breitgand, Kutiel, Raz: "Cost-Aware Live Migration
//! of Services in the Cloud").
//!
//! Units: bandwidths are Mbit/s at this API (the paper's F takes B_s in
//! Mbit/s: e^(20 − B_s/8) is eq. (1) with t_SLA = 1 s, λ = 20 req/s and
//! 1 MB = 8 Mbit responses); inside the page model they are pages per
//! second, times are seconds, and a cost is seconds of SLA violation
//! (F integrated over time, F(0) = 1 during the downtime).

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum ModelError {
    #[error("invalid model parameter: {0}")]
    Param(String),
}

/// Eq. (1): F(B_s) = P[S > t_SLA] = e^(t_SLA (λ − μ(B_s))) for an M/M/1
/// server whose service rate is μ(B_s) = B_s / average response size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostFunction {
    /// t_SLA: the response-time bound of the SLA, seconds.
    pub t_sla_s: f64,
    /// λ: request arrival rate, requests per second.
    pub arrival_rate: f64,
    /// Average response size, Mbit (μ = B_s / this).
    pub response_mbit: f64,
}

impl Default for CostFunction {
    /// The paper's Tomcat measurement (§3): F(B_s) = e^(20 − B_s/8).
    fn default() -> Self {
        CostFunction {
            t_sla_s: 1.0,
            arrival_rate: 20.0,
            response_mbit: 8.0,
        }
    }
}

impl CostFunction {
    pub fn validate(&self) -> Result<(), ModelError> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !ok(self.t_sla_s) || !ok(self.arrival_rate) || !ok(self.response_mbit) {
            return Err(ModelError::Param(format!(
                "cost function needs positive finite t_sla_s, arrival_rate, response_mbit (got {self:?})"
            )));
        }
        Ok(())
    }

    /// F(B_s), B_s in Mbit/s. Capped at 1: F is a probability, and where
    /// μ ≤ λ the M/M/1 queue is unstable and every request misses its
    /// deadline. This makes F(0) = 1, the normalisation §4 assumes.
    pub fn f(&self, residual_mbps: f64) -> f64 {
        let mu = residual_mbps.max(0.0) / self.response_mbit;
        (self.t_sla_s * (self.arrival_rate - mu)).exp().min(1.0)
    }
}

/// The uniform-dirtying page model of §4: M pages, each written in a time
/// unit (1 s) with probability p independently, so it stays clean with
/// q = 1 − p; total link bandwidth B.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PageModel {
    /// M: pages to migrate.
    pub pages: f64,
    /// B: link bandwidth, pages per second.
    pub link_pps: f64,
    /// ln q, kept instead of q because q is within 1e-6 of 1 for real VMs.
    pub ln_q: f64,
    pub page_size: usize,
    pub cost: CostFunction,
}

impl PageModel {
    /// `dirty_prob`: p, the per-page probability of a write within one
    /// second. `link_mbps`: B in Mbit/s.
    pub fn new(
        pages: u64,
        page_size: usize,
        link_mbps: f64,
        dirty_prob: f64,
        cost: CostFunction,
    ) -> Result<Self, ModelError> {
        cost.validate()?;
        if pages == 0 || page_size == 0 {
            return Err(ModelError::Param(
                "memory must hold at least one page".into(),
            ));
        }
        if !(link_mbps.is_finite() && link_mbps > 0.0) {
            return Err(ModelError::Param(format!(
                "link bandwidth {link_mbps} Mbit/s must be > 0"
            )));
        }
        if !(dirty_prob > 0.0 && dirty_prob < 1.0) {
            return Err(ModelError::Param(format!(
                "dirtying probability {dirty_prob} must be in (0, 1)"
            )));
        }
        Ok(PageModel {
            pages: pages as f64,
            link_pps: mbps_to_pps(link_mbps, page_size),
            ln_q: (-dirty_prob).ln_1p(),
            page_size,
            cost,
        })
    }

    pub fn link_mbps(&self) -> f64 {
        pps_to_mbps(self.link_pps, self.page_size)
    }

    /// F(B − B_m) for a migration rate in pages per second.
    pub fn f_of_rate(&self, rate_pps: f64) -> f64 {
        self.cost
            .f(pps_to_mbps(self.link_pps - rate_pps, self.page_size))
    }

    /// 1 − q^(1/B_m), computed without cancellation.
    fn a(&self, rate_pps: f64) -> f64 {
        -(self.ln_q / rate_pps).exp_m1()
    }

    /// Eq. (2): E(clean(t)) = N1·q^t + (1 − q^t)/(1 − q^(1/B_m)).
    pub fn expected_clean(&self, n1: f64, t: f64, rate_pps: f64) -> f64 {
        let qt = (self.ln_q * t).exp();
        n1 * qt + (-(self.ln_q * t).exp_m1()) / self.a(rate_pps)
    }

    /// Eq. (3): expected time to go from N1 to N2 clean pages at B_m,
    /// t = (1/ln q)·ln((N2(1 − q^(1/B_m)) − 1)/(N1(1 − q^(1/B_m)) − 1)).
    /// None when N2 is at or beyond the steady state 1/(1 − q^(1/B_m)).
    pub fn time_between(&self, n1: f64, n2: f64, rate_pps: f64) -> Option<f64> {
        let a = self.a(rate_pps);
        let num = n2 * a - 1.0;
        let den = n1 * a - 1.0;
        if num >= 0.0 || den >= 0.0 {
            return None;
        }
        // ln(num/den) = ln1p((num − den)/den) keeps precision when the
        // step is one page out of millions.
        let t = ((num - den) / den).ln_1p() / self.ln_q;
        (t.is_finite() && t >= 0.0).then_some(t)
    }

    /// Cost_pc(N, B_m) = t(0 → N)·F(B − B_m) plus the copy phase
    /// (M − N)/B·F(0) (§4, the text after eq. (3)). Returns
    /// (total cost, pre-copy time, downtime).
    pub fn fixed_cost(&self, n: f64, rate_pps: f64) -> Option<(f64, f64, f64)> {
        let t = self.time_between(0.0, n, rate_pps)?;
        let down = (self.pages - n) / self.link_pps;
        Some((t * self.f_of_rate(rate_pps) + down, t, down))
    }

    /// The N minimising `fixed_cost` for a given B_m, from d/dN = 0:
    /// F(B−B_m)·a/((1 − N·a)(−ln q)) = 1/B  ⇒  N = (1 − B·F·a/(−ln q))/a,
    /// clamped to [0, min(M, steady state)].
    pub fn best_n_for_rate(&self, rate_pps: f64) -> f64 {
        let a = self.a(rate_pps);
        let f = self.f_of_rate(rate_pps);
        let n = (1.0 - self.link_pps * f * a / (-self.ln_q)) / a;
        // Just below the steady state the time is finite but enormous.
        let reachable = (1.0 - 1e-9) / a;
        n.clamp(0.0, self.pages.min(reachable)).floor()
    }

    /// Step cost of CALM-adaptive (§5): moving from i−1 to i clean pages
    /// at B_i costs C_i = F(B − B_i)·(1/ln q)·ln((i·a − 1)/((i−1)·a − 1)),
    /// a = 1 − q^(1/B_i). Returns (cost, time); None if unreachable.
    pub fn step_cost(&self, i: f64, rate_pps: f64) -> Option<(f64, f64)> {
        let t = self.time_between(i - 1.0, i, rate_pps)?;
        Some((t * self.f_of_rate(rate_pps), t))
    }

    /// Smallest rate (pages/s) at which step i is reachable at all:
    /// i·a < 1 ⇔ B_i > ln q / ln(1 − 1/i).
    pub fn min_rate_for_step(&self, i: f64) -> f64 {
        if i <= 1.0 {
            0.0
        } else {
            self.ln_q / (-1.0 / i).ln_1p()
        }
    }
}

pub fn mbps_to_pps(mbps: f64, page_size: usize) -> f64 {
    mbps * 1e6 / 8.0 / page_size as f64
}

pub fn pps_to_mbps(pps: f64, page_size: usize) -> f64 {
    pps * page_size as f64 * 8.0 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cost_is_the_papers() {
        let c = CostFunction::default();
        assert!((c.f(200.0) - (20.0f64 - 25.0).exp()).abs() < 1e-12);
        assert_eq!(c.f(0.0), 1.0);
        assert_eq!(c.f(100.0), 1.0); // e^(7.5) capped
    }

    #[test]
    fn eq3_inverts_eq2() {
        let m = PageModel::new(1000, 4096, 100.0, 0.01, CostFunction::default()).unwrap();
        let rate = 500.0;
        let t = m.time_between(100.0, 800.0, rate).unwrap();
        let back = m.expected_clean(100.0, t, rate);
        assert!((back - 800.0).abs() < 1e-6, "{back}");
    }

    #[test]
    fn eq2_closed_form_matches_its_sum() {
        let m = PageModel::new(1000, 4096, 100.0, 0.02, CostFunction::default()).unwrap();
        let (rate, t) = (250.0, 2.0);
        let q = m.ln_q.exp();
        let sum: f64 = (0..(rate * t) as usize)
            .map(|i| q.powf(i as f64 / rate))
            .sum();
        let closed = m.expected_clean(0.0, t, rate);
        assert!((sum - closed).abs() < 1e-9 * sum, "{sum} vs {closed}");
    }
}
