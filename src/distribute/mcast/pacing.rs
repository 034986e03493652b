//! Token bucket pacing the sender: at most `rate` bits per second on the
//! link, with a small burst so the kernel and a downstream shaper (which
//! drop what overflows their queues) see an even stream.

use std::time::{Duration, Instant};

pub struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// Largest number of bytes sent back to back.
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate_bits` bits/s, `burst` bytes.
    pub fn new(rate_bits: u64, burst: usize) -> TokenBucket {
        TokenBucket {
            rate: rate_bits.max(8_000) as f64 / 8.0,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: Instant::now(),
        }
    }

    pub fn set_rate(&mut self, rate_bits: u64) {
        self.refill(Instant::now());
        self.rate = rate_bits.max(8_000) as f64 / 8.0;
    }

    pub fn rate_bits(&self) -> u64 {
        (self.rate * 8.0) as u64
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long to wait before `bytes` may go; takes them (the balance may
    /// go negative, so waits sum up exactly to the rate).
    pub fn take(&mut self, bytes: usize) -> Duration {
        self.refill(Instant::now());
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Blocks the calling (sender) thread until `bytes` may go. Sleeps
    /// shorter than ~200 µs are skipped: the debt carries over to the next
    /// datagram, which keeps the average exact without a busy loop.
    pub fn wait(&mut self, bytes: usize) {
        let d = self.take(bytes);
        if d > Duration::from_micros(200) {
            std::thread::sleep(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_rate_is_kept() {
        // 80 Mbit/s = 10 MB/s: 2 MB of 1000-byte datagrams take ~200 ms.
        let mut tb = TokenBucket::new(80_000_000, 16_000);
        let t0 = Instant::now();
        for _ in 0..2000 {
            tb.wait(1000);
        }
        let el = t0.elapsed().as_secs_f64();
        // Never faster than the rate (the upper bound depends on load).
        assert!(el > 0.17, "{el}");
    }
}
