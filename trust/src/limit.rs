//! Rate limiting of refusal logs: a flood of forged sessions must not become
//! a flood of log lines (or a disk filled by them).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets through at most `burst` events per `window`; counts the others so
/// the next line that is let through can say how many were suppressed.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    burst: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(window: Duration, burst: u32) -> LogLimiter {
        LogLimiter {
            window,
            burst: burst.max(1),
            state: Mutex::new(State {
                start: Instant::now(),
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)`: log this event, and say `n` earlier ones were suppressed;
    /// `None`: stay quiet.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while counting.
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(s.start) >= self.window {
            s.start = now;
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_quiet_then_the_count_of_what_was_suppressed() {
        let l = LogLimiter::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(l.allow_at(t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.allow_at(t0 + Duration::from_secs(11)), Some(5));
        assert_eq!(l.allow_at(t0 + Duration::from_secs(11)), Some(0));
    }
}
