//! One direction of an emulated WAN link, as pure arithmetic on instants:
//! random loss, a rate-limited bottleneck with a bounded drop-tail queue,
//! then a fixed propagation delay. Kept free of I/O so that its timing can
//! be unit-tested exactly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What one direction of the link does to frames.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkShape {
    /// One-way propagation delay added to every frame.
    pub delay: Duration,
    /// Bottleneck rate in bits per second over whole Ethernet frames
    /// (header included); 0 means unlimited.
    pub rate_bps: u64,
    /// Bytes the token bucket may send back to back at line speed after an
    /// idle period (0: pure serialisation, like a real link of that rate).
    pub burst_bytes: u64,
    /// Frames waiting for the bottleneck before drop-tail starts.
    pub limit_frames: usize,
    /// Probability in [0, 1) that a frame is lost before the queue.
    pub loss: f64,
}

impl Default for LinkShape {
    fn default() -> Self {
        LinkShape {
            delay: Duration::from_millis(10),
            rate_bps: 0,
            burst_bytes: 0,
            limit_frames: 1000,
            loss: 0.0,
        }
    }
}

/// What becomes of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the far side at this instant.
    Deliver(Instant),
    /// Lost on the wire (the `loss` share).
    Lost,
    /// The bottleneck queue was full (drop-tail).
    QueueFull,
}

/// State of one direction.
pub struct Shaper {
    shape: LinkShape,
    rng: StdRng,
    /// GCRA "theoretical arrival time": when the bucket would next be full
    /// of debt; a token bucket expressed as one instant.
    tat: Option<Instant>,
    /// Start-of-transmission instants of frames still waiting for the
    /// bottleneck (in order); their count is the queue length.
    waiting: VecDeque<Instant>,
    /// Last delivery instant handed out: frames never overtake each other.
    last_delivery: Option<Instant>,
}

impl Shaper {
    /// A shaper whose loss draws are reproducible from `seed`.
    pub fn new(shape: LinkShape, seed: u64) -> Shaper {
        Shaper {
            shape,
            rng: StdRng::seed_from_u64(seed),
            tat: None,
            waiting: VecDeque::new(),
            last_delivery: None,
        }
    }

    /// The shape this direction applies.
    pub fn shape(&self) -> &LinkShape {
        &self.shape
    }

    /// Frames currently queued behind the bottleneck at `now`.
    pub fn queued(&mut self, now: Instant) -> usize {
        while self.waiting.front().is_some_and(|&start| start <= now) {
            self.waiting.pop_front();
        }
        self.waiting.len()
    }

    /// Decide the fate of a frame of `len` bytes arriving at `now`.
    pub fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        // Loss first, as on a wire: a lost frame takes no queue space.
        if self.shape.loss > 0.0 && self.rng.gen::<f64>() < self.shape.loss {
            return Verdict::Lost;
        }
        if self.queued(now) >= self.shape.limit_frames {
            return Verdict::QueueFull;
        }
        let departure = if self.shape.rate_bps == 0 {
            now
        } else {
            let bits = len as f64 * 8.0;
            let tx = Duration::from_secs_f64(bits / self.shape.rate_bps as f64);
            let burst = Duration::from_secs_f64(
                self.shape.burst_bytes as f64 * 8.0 / self.shape.rate_bps as f64,
            );
            let tat = self.tat.map_or(now, |t| t.max(now));
            // The frame may start once the bucket holds its tokens: at most
            // `burst` of debt may be outstanding.
            let start = tat.checked_sub(burst).map_or(now, |s| s.max(now));
            self.tat = Some(tat + tx);
            if start > now {
                self.waiting.push_back(start);
            }
            start + tx
        };
        let mut at = departure + self.shape.delay;
        if let Some(last) = self.last_delivery {
            at = at.max(last);
        }
        self.last_delivery = Some(at);
        Verdict::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rate_bps: u64, limit: usize) -> LinkShape {
        LinkShape {
            delay: Duration::from_millis(10),
            rate_bps,
            burst_bytes: 0,
            limit_frames: limit,
            loss: 0.0,
        }
    }

    fn at(v: Verdict) -> Instant {
        match v {
            Verdict::Deliver(t) => t,
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn unlimited_rate_only_adds_the_delay() {
        let mut s = Shaper::new(shape(0, 10), 1);
        let t0 = Instant::now();
        assert_eq!(at(s.admit(t0, 1500)), t0 + Duration::from_millis(10));
    }

    #[test]
    fn frames_are_serialised_at_the_rate() {
        // 1250 bytes = 10 000 bits = 1 ms at 10 Mbit/s.
        let mut s = Shaper::new(shape(10_000_000, 100), 1);
        let t0 = Instant::now();
        let d: Vec<Instant> = (0..5).map(|_| at(s.admit(t0, 1250))).collect();
        for (i, t) in d.iter().enumerate() {
            let want = t0 + Duration::from_millis(10 + i as u64 + 1);
            let err = if *t > want { *t - want } else { want - *t };
            assert!(err < Duration::from_micros(5), "frame {i}: {err:?}");
        }
        // Four of them wait for the link at t0 (the first is on the wire).
        assert_eq!(s.queued(t0), 4);
        assert_eq!(s.queued(t0 + Duration::from_millis(10)), 0);
    }

    #[test]
    fn a_full_queue_drops_the_tail_and_order_is_kept() {
        let mut s = Shaper::new(shape(1_000_000, 3), 1);
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..6).map(|_| s.admit(t0, 1500)).collect();
        let delivered: Vec<Instant> = verdicts
            .iter()
            .filter_map(|v| match v {
                Verdict::Deliver(t) => Some(*t),
                _ => None,
            })
            .collect();
        assert_eq!(delivered.len(), 4, "{verdicts:?}"); // one on the wire + 3 queued
        assert!(delivered.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(verdicts[4], Verdict::QueueFull);
    }

    #[test]
    fn burst_lets_frames_start_at_once_after_idle() {
        let mut s = Shaper::new(
            LinkShape {
                burst_bytes: 3000,
                ..shape(10_000_000, 100)
            },
            1,
        );
        let t0 = Instant::now();
        at(s.admit(t0, 1250));
        at(s.admit(t0, 1250));
        assert_eq!(s.queued(t0), 0, "within the burst nobody waits");
    }

    #[test]
    fn loss_share_is_close_to_the_setting_and_reproducible() {
        let count = |seed| {
            let mut s = Shaper::new(
                LinkShape {
                    loss: 0.2,
                    ..shape(0, 10)
                },
                seed,
            );
            let t0 = Instant::now();
            (0..10_000)
                .filter(|_| s.admit(t0, 100) == Verdict::Lost)
                .count()
        };
        let lost = count(7);
        assert!((1800..2200).contains(&lost), "{lost} of 10000 lost");
        assert_eq!(lost, count(7));
    }
}
