//! Stop policies: after each pre-copy round, continue, stop (pause the VM
//! and copy what is left) or abort (leave the VM where it is).

use serde::{Deserialize, Serialize};

/// What the migration saw in the round that just ended.
#[derive(Debug, Clone, Copy)]
pub struct RoundObservation {
    /// The round that ended, from 1.
    pub round: u32,
    /// Pages still dirty: what a stop now would have to copy.
    pub remaining_pages: u64,
    pub total_pages: u64,
    pub page_size: usize,
    /// Pages sent over all rounds so far (Xen's "3 × memory" rule).
    pub pages_sent_total: u64,
    /// Pages and wire bytes of this round, and how long it took.
    pub round_pages: u64,
    pub round_wire_bytes: u64,
    pub round_seconds: f64,
    /// B: the link's capacity, Mbit/s (the copy phase runs at it).
    pub link_mbps: f64,
}

impl RoundObservation {
    /// Wire bytes per page this round (encoders shrink pages), or a raw
    /// page when nothing was sent.
    fn wire_bytes_per_page(&self) -> f64 {
        if self.round_pages == 0 {
            self.page_size as f64
        } else {
            self.round_wire_bytes as f64 / self.round_pages as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopDecision {
    Continue,
    Stop,
    Abort,
}

pub trait StopPolicy: Send {
    fn name(&self) -> &'static str;
    fn observe(&mut self, o: &RoundObservation) -> StopDecision;
}

/// Xen's default (CloudNet §4.1): stop after 30 rounds, once more than
/// 3 × memory was sent, or when few pages remain. "Few" is 256 KiB, the
/// stop condition paper 002 §5 uses for XEN-basic (Xen itself: 50 pages).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XenDefault {
    pub max_rounds: u32,
    pub max_sent_factor: f64,
    pub min_remaining_bytes: u64,
}

impl Default for XenDefault {
    fn default() -> Self {
        XenDefault {
            max_rounds: 30,
            max_sent_factor: 3.0,
            min_remaining_bytes: 256 * 1024,
        }
    }
}

impl StopPolicy for XenDefault {
    fn name(&self) -> &'static str {
        "xen"
    }
    fn observe(&mut self, o: &RoundObservation) -> StopDecision {
        let remaining_bytes = o.remaining_pages * o.page_size as u64;
        if remaining_bytes <= self.min_remaining_bytes
            || o.round >= self.max_rounds
            || o.pages_sent_total as f64 >= self.max_sent_factor * o.total_pages as f64
        {
            StopDecision::Stop
        } else {
            StopDecision::Continue
        }
    }
}

/// KVM/QEMU: stop once the expected downtime (what remains, at this
/// round's bytes per page, over the link) is within the limit.
/// QEMU has no round limit; `max_rounds` keeps a simulation bounded and
/// stops (not aborts) when reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvmDowntime {
    pub max_downtime_s: f64,
    pub max_rounds: u32,
}

impl Default for KvmDowntime {
    fn default() -> Self {
        // QEMU's default downtime-limit is 300 ms.
        KvmDowntime {
            max_downtime_s: 0.3,
            max_rounds: 1000,
        }
    }
}

impl KvmDowntime {
    pub fn expected_downtime_s(o: &RoundObservation) -> f64 {
        o.remaining_pages as f64 * o.wire_bytes_per_page() * 8.0 / (o.link_mbps * 1e6)
    }
}

impl StopPolicy for KvmDowntime {
    fn name(&self) -> &'static str {
        "kvm"
    }
    fn observe(&mut self, o: &RoundObservation) -> StopDecision {
        if Self::expected_downtime_s(o) <= self.max_downtime_s || o.round >= self.max_rounds {
            StopDecision::Stop
        } else {
            StopDecision::Continue
        }
    }
}

/// CloudNet's smart stop and copy (§4.1): keep the pages remaining after
/// each of the last `window` rounds; once the window is full, stop at a
/// round whose remaining count is below all of them (a new local minimum
/// of the expected pause), and give up if the counts rise through the
/// whole window (the migration is not converging).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmartStop {
    pub window: usize,
    pub max_rounds: u32,
    /// On a rising trend: abort (true) or stop and copy now (false).
    pub abort_on_rise: bool,
    #[serde(skip)]
    history: Vec<u64>,
}

impl Default for SmartStop {
    fn default() -> Self {
        SmartStop {
            window: 5,
            max_rounds: 30,
            abort_on_rise: true,
            history: Vec::new(),
        }
    }
}

impl StopPolicy for SmartStop {
    fn name(&self) -> &'static str {
        "smart"
    }
    fn observe(&mut self, o: &RoundObservation) -> StopDecision {
        let cur = o.remaining_pages;
        let w = self.window.max(1);
        let decision = if cur == 0 {
            StopDecision::Stop
        } else if self.history.len() >= w {
            let window = &self.history[self.history.len() - w..];
            let rising = window.windows(2).all(|p| p[1] > p[0]) && cur > window[w - 1];
            if window.iter().all(|&h| cur < h) {
                StopDecision::Stop
            } else if rising {
                if self.abort_on_rise {
                    StopDecision::Abort
                } else {
                    StopDecision::Stop
                }
            } else if o.round >= self.max_rounds {
                StopDecision::Stop
            } else {
                StopDecision::Continue
            }
        } else if o.round >= self.max_rounds {
            StopDecision::Stop
        } else {
            StopDecision::Continue
        };
        self.history.push(cur);
        decision
    }
}

/// CALM (paper 002 §4–5): the planner says how many clean pages to reach
/// before the copy phase (N); stop once the destination holds that many.
/// The plan assumes uniform dirtying; a real workload's writable working
/// set may keep more pages dirty than the plan allows, so the policy also
/// stops when `stall_window` rounds bring no new minimum, or after
/// `max_rounds`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedStop {
    pub target_clean_pages: u64,
    pub stall_window: usize,
    pub max_rounds: u32,
    #[serde(skip)]
    best: Option<u64>,
    #[serde(skip)]
    since_best: usize,
}

impl PlannedStop {
    pub fn new(target_clean_pages: u64) -> Self {
        PlannedStop {
            target_clean_pages,
            stall_window: 3,
            max_rounds: 30,
            best: None,
            since_best: 0,
        }
    }
}

impl StopPolicy for PlannedStop {
    fn name(&self) -> &'static str {
        "calm"
    }
    fn observe(&mut self, o: &RoundObservation) -> StopDecision {
        let clean = o.total_pages.saturating_sub(o.remaining_pages);
        match self.best {
            Some(b) if o.remaining_pages >= b => self.since_best += 1,
            _ => {
                self.best = Some(o.remaining_pages);
                self.since_best = 0;
            }
        }
        if clean >= self.target_clean_pages
            || self.since_best >= self.stall_window
            || o.round >= self.max_rounds
        {
            StopDecision::Stop
        } else {
            StopDecision::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(round: u32, remaining: u64) -> RoundObservation {
        RoundObservation {
            round,
            remaining_pages: remaining,
            total_pages: 10_000,
            page_size: 4096,
            pages_sent_total: 10_000,
            round_pages: 1000,
            round_wire_bytes: 1000 * 4096,
            round_seconds: 1.0,
            link_mbps: 100.0,
        }
    }

    #[test]
    fn xen_stops_on_few_pages_rounds_or_volume() {
        let mut x = XenDefault::default();
        assert_eq!(x.observe(&obs(1, 5000)), StopDecision::Continue);
        assert_eq!(x.observe(&obs(2, 64)), StopDecision::Stop);
        assert_eq!(x.observe(&obs(30, 5000)), StopDecision::Stop);
        let mut o = obs(3, 5000);
        o.pages_sent_total = 30_000;
        assert_eq!(x.observe(&o), StopDecision::Stop);
    }

    #[test]
    fn kvm_stops_within_downtime() {
        let mut k = KvmDowntime::default();
        // 1000 pages * 4 KiB * 8 / 100 Mbit/s = 0.33 s > 0.3 s
        assert_eq!(k.observe(&obs(1, 1000)), StopDecision::Continue);
        assert_eq!(k.observe(&obs(2, 900)), StopDecision::Stop);
    }

    #[test]
    fn smart_stop_waits_for_the_window_then_a_new_minimum() {
        let mut s = SmartStop::default();
        for (r, rem) in [(1, 900), (2, 500), (3, 520), (4, 510), (5, 530)] {
            assert_eq!(s.observe(&obs(r, rem)), StopDecision::Continue, "round {r}");
        }
        assert_eq!(s.observe(&obs(6, 505)), StopDecision::Continue); // 500 is lower
        assert_eq!(s.observe(&obs(7, 499)), StopDecision::Stop);
    }

    #[test]
    fn smart_stop_aborts_on_a_rising_trend() {
        let mut s = SmartStop::default();
        for (r, rem) in [(1, 100), (2, 200), (3, 300), (4, 400), (5, 500)] {
            assert_eq!(s.observe(&obs(r, rem)), StopDecision::Continue);
        }
        assert_eq!(s.observe(&obs(6, 600)), StopDecision::Abort);
    }

    #[test]
    fn planned_stop_reaches_target_or_stalls() {
        let mut p = PlannedStop::new(9_000);
        assert_eq!(p.observe(&obs(1, 2000)), StopDecision::Continue);
        assert_eq!(p.observe(&obs(2, 999)), StopDecision::Stop);
        let mut p = PlannedStop::new(10_000);
        assert_eq!(p.observe(&obs(1, 2000)), StopDecision::Continue);
        assert_eq!(p.observe(&obs(2, 2100)), StopDecision::Continue);
        assert_eq!(p.observe(&obs(3, 2050)), StopDecision::Continue);
        assert_eq!(p.observe(&obs(4, 2001)), StopDecision::Stop);
    }
}
