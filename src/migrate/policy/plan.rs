//! The planner: for a memory size, link and dirtying probability, the
//! schedule each policy would use and its predicted cost, total time and
//! downtime under paper 002's uniform model (eq. 1–3).

use serde::Serialize;

use super::cost::{mbps_to_pps, pps_to_mbps, PageModel};

/// A policy's predicted migration.
#[derive(Debug, Clone, Serialize)]
pub struct PlanOutcome {
    pub policy: &'static str,
    /// Expected seconds of SLA violation: ∫F(B − B_m)dt + downtime·F(0).
    pub cost: f64,
    pub total_time_s: f64,
    pub precopy_time_s: f64,
    pub downtime_s: f64,
    /// N: clean pages at the start of the copy phase.
    pub clean_pages_at_stop: u64,
    /// Pre-copy rounds (XEN-basic) or steps (CALM-adaptive); 1 for fixed.
    pub rounds: u64,
    /// The schedule: one rate per round (XEN-basic), the single B_m
    /// (CALM-fixed), or B_i per step (CALM-adaptive), Mbit/s.
    pub rates_mbps: Vec<f64>,
}

impl PlanOutcome {
    /// A plan whose pre-copy ran one round (or step) per rate in `rates`,
    /// taking `precopy_s` at a cost of `precopy_cost`, and stopped with
    /// `clean` pages clean; the stop-and-copy phase then takes `down` s,
    /// all of it violating the SLA.
    fn after_rounds(
        policy: &'static str,
        precopy_cost: f64,
        precopy_s: f64,
        down: f64,
        clean: u64,
        rates: Vec<f64>,
    ) -> PlanOutcome {
        PlanOutcome {
            policy,
            cost: precopy_cost + down,
            total_time_s: precopy_s + down,
            precopy_time_s: precopy_s,
            downtime_s: down,
            clean_pages_at_stop: clean,
            rounds: rates.len() as u64,
            rates_mbps: rates,
        }
    }
}

/// XEN-basic under the uniform model: round r sends the pages dirty at its
/// start at min(start + (r−1)·step, B); eq. (2) gives the clean pages at
/// its end (clean ones decay, each sent page survives with q^(t − i/B_m)).
/// Stops like Xen: few pages left, 30 rounds, or 3 × memory sent.
pub fn xen_basic(
    m: &PageModel,
    start_mbps: f64,
    step_mbps: f64,
    stop_pages: f64,
    max_rounds: u32,
    max_sent_factor: f64,
) -> PlanOutcome {
    let mut clean = 0.0f64;
    let (mut t_total, mut cost, mut sent) = (0.0, 0.0, 0.0);
    let mut rates = Vec::new();
    for r in 1..=max_rounds.max(1) {
        let dirty = m.pages - clean;
        let rate_mbps = (start_mbps + step_mbps * f64::from(r - 1)).min(m.link_mbps());
        let rate = mbps_to_pps(rate_mbps, m.page_size);
        let t = dirty / rate;
        clean = m.expected_clean(clean, t, rate).min(m.pages);
        t_total += t;
        cost += t * m.f_of_rate(rate);
        sent += dirty;
        rates.push(rate_mbps);
        if m.pages - clean <= stop_pages || sent >= max_sent_factor * m.pages {
            break;
        }
    }
    let down = (m.pages - clean) / m.link_pps;
    PlanOutcome::after_rounds(
        "xen-basic",
        cost,
        t_total,
        down,
        clean.floor() as u64,
        rates,
    )
}

/// CALM-fixed (§4): the B_m and N minimising
/// t(0 → N)·F(B − B_m) + (M − N)/B. For each B_m the best N has a closed
/// form (`PageModel::best_n_for_rate`); B_m is found by a scan over the
/// link's range refined by golden-section search.
pub fn calm_fixed(m: &PageModel) -> PlanOutcome {
    let eval = |rate: f64| -> f64 {
        let n = m.best_n_for_rate(rate);
        m.fixed_cost(n, rate).map_or(f64::INFINITY, |c| c.0)
    };
    let rate = minimise(eval, m.link_pps * 1e-4, m.link_pps, 400);
    let n = m.best_n_for_rate(rate);
    let (cost, t, down) =
        m.fixed_cost(n, rate)
            .unwrap_or((m.pages / m.link_pps, 0.0, m.pages / m.link_pps));
    // One pre-copy round at B_m; `cost` already counts the downtime.
    let rates = vec![pps_to_mbps(rate, m.page_size)];
    PlanOutcome::after_rounds("calm-fixed", cost - down, t, down, n as u64, rates)
}

/// CALM-adaptive (§5): for step i (i−1 → i clean pages) choose the B_i
/// minimising C_i; stop before the first step whose best C_i is at least
/// F(0)/B = 1/B, the cost of copying that page in the copy phase instead
/// (costs only grow with i, Theorem 1's proof). `max_steps` bounds the
/// work (and the schedule's length) for huge memories.
pub fn calm_adaptive(m: &PageModel, max_steps: u64) -> PlanOutcome {
    let page_copy_cost = 1.0 / m.link_pps;
    let mut rates = Vec::new();
    let (mut t_total, mut cost) = (0.0, 0.0);
    let last = (m.pages as u64).min(max_steps);
    let mut hint = m.link_pps * 0.5;
    for i in 1..=last {
        let fi = i as f64;
        let lo = m.min_rate_for_step(fi).max(m.link_pps * 1e-6);
        if lo >= m.link_pps {
            break;
        }
        let eval = |r: f64| m.step_cost(fi, r).map_or(f64::INFINITY, |c| c.0);
        // The optimum moves slowly with i: search near the last one
        // first, and fall back to the whole range when it is not inside.
        let near = minimise(eval, (hint * 0.9).max(lo), (hint * 1.1).min(m.link_pps), 8);
        let rate = if near > (hint * 0.9).max(lo) * 1.0001
            && near < (hint * 1.1).min(m.link_pps) * 0.9999
        {
            near
        } else {
            minimise(eval, lo, m.link_pps, 48)
        };
        let Some((c, t)) = m.step_cost(fi, rate) else {
            break;
        };
        // (A relative margin: at B_i = B the step costs exactly 1/B, and
        // rounding must not make copying it live look cheaper.)
        if c >= page_copy_cost * (1.0 - 1e-9) {
            break;
        }
        hint = rate;
        cost += c;
        t_total += t;
        rates.push(pps_to_mbps(rate, m.page_size));
    }
    let n = rates.len() as f64;
    let down = (m.pages - n) / m.link_pps;
    let clean = rates.len() as u64;
    PlanOutcome::after_rounds("calm-adaptive", cost, t_total, down, clean, rates)
}

/// Minimum of `f` on [lo, hi]: a geometric scan of `scan` points (the
/// costs span many orders of magnitude) and a golden-section refinement
/// between the best point's neighbours. Returns the argument.
pub fn minimise(f: impl Fn(f64) -> f64, lo: f64, hi: f64, scan: usize) -> f64 {
    if hi <= lo {
        return hi;
    }
    let scan = scan.max(3);
    let ratio = (hi / lo).powf(1.0 / (scan - 1) as f64);
    let pts: Vec<f64> = (0..scan)
        .map(|k| (lo * ratio.powi(k as i32)).min(hi))
        .collect();
    let mut best = 0;
    let mut best_v = f64::INFINITY;
    for (k, &x) in pts.iter().enumerate() {
        let v = f(x);
        if v < best_v {
            best_v = v;
            best = k;
        }
    }
    let (mut a, mut b) = (pts[best.saturating_sub(1)], pts[(best + 1).min(scan - 1)]);
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
        if (b - a) <= 1e-9 * b {
            break;
        }
    }
    let x = (a + b) / 2.0;
    // Keep the scan's point if refinement found nothing better (flat or
    // infinite regions).
    if f(x) <= best_v {
        x
    } else {
        pts[best]
    }
}

#[cfg(test)]
mod tests {
    use super::super::cost::CostFunction;
    use super::*;

    fn model() -> PageModel {
        PageModel::new(512, 4096, 256.0, 0.05, CostFunction::default()).unwrap()
    }

    #[test]
    fn calm_fixed_beats_a_brute_force_grid() {
        let m = model();
        let plan = calm_fixed(&m);
        let mut best = f64::INFINITY;
        for k in 1..=400 {
            let rate = m.link_pps * k as f64 / 400.0;
            for n in 0..=512 {
                if let Some((c, _, _)) = m.fixed_cost(n as f64, rate) {
                    best = best.min(c);
                }
            }
        }
        assert!(plan.cost <= best * (1.0 + 1e-6), "{} vs {best}", plan.cost);
    }

    #[test]
    fn calm_adaptive_is_no_worse_than_fixed() {
        let m = model();
        let a = calm_adaptive(&m, u64::MAX);
        let f = calm_fixed(&m);
        assert!(a.cost <= f.cost * (1.0 + 1e-6), "{} vs {}", a.cost, f.cost);
    }
}
