//! How far the sender may read QEMU's stream ahead of the WAN.
//!
//! QEMU's `exec:` migration counts its downtime until its last bytes are in
//! the pipe, and it estimates its bandwidth from how fast the pipe drains.
//! A sender that reads tens of MiB ahead of a slow link therefore makes
//! QEMU stop the guest too early, and that backlog then crosses the WAN
//! while the guest is paused. So stream bytes between the tokenizer and
//! the WAN socket are bounded by time: at most `target` worth of what the
//! writer has lately been draining, never below a floor that keeps the
//! site queries pipelined.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Never fewer bytes in flight than this (two full batches): the claim
/// chain and the query window need some batches ahead of the writer.
pub const MIN_BYTES: u64 = 4 << 20;
/// Never more, whatever the measured rate.
pub const MAX_BYTES: u64 = 64 << 20;
/// Drain rate samples cover at least this long.
const SAMPLE: Duration = Duration::from_millis(50);

pub struct ReadAhead {
    target: Option<Duration>,
    state: Mutex<State>,
    room: Condvar,
}

struct State {
    in_flight: u64,
    /// Sizes of the admitted batches not yet written, in stream order.
    sizes: VecDeque<u64>,
    /// Smoothed stream bytes per second written to the WAN socket.
    rate: Option<f64>,
    sample_start: Instant,
    sample_bytes: u64,
    closed: bool,
}

impl ReadAhead {
    /// `target`: how much drain time may be queued; `None` bounds nothing
    /// but the pipeline's own queues.
    pub fn new(target: Option<Duration>) -> ReadAhead {
        ReadAhead {
            target,
            state: Mutex::new(State {
                in_flight: 0,
                sizes: VecDeque::new(),
                rate: None,
                sample_start: Instant::now(),
                sample_bytes: 0,
                closed: false,
            }),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked holding it;
        // the counters stay meaningful.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current bound, in stream bytes.
    pub fn cap(&self) -> u64 {
        cap(self.target, &self.lock())
    }

    /// Stream bytes admitted and not yet on the socket.
    pub fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    /// Admit a batch of `bytes` stream bytes, blocking (on the tokenizer's
    /// thread) until it fits. Returns false once the pipeline is closed.
    pub fn admit(&self, bytes: u64) -> bool {
        let mut st = self.lock();
        loop {
            if st.closed {
                return false;
            }
            if st.in_flight == 0 || st.in_flight + bytes <= cap(self.target, &st) {
                st.in_flight += bytes;
                st.sizes.push_back(bytes);
                return true;
            }
            // Timed, so a missed wake-up costs at most this long.
            st = self
                .room
                .wait_timeout(st, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The oldest admitted batch is on the socket.
    pub fn written(&self) {
        let mut st = self.lock();
        let Some(bytes) = st.sizes.pop_front() else {
            return;
        };
        st.in_flight -= bytes;
        st.sample_bytes += bytes;
        let dt = st.sample_start.elapsed();
        if dt >= SAMPLE {
            let now = st.sample_bytes as f64 / dt.as_secs_f64();
            st.rate = Some(match st.rate {
                Some(r) => 0.7 * r + 0.3 * now,
                None => now,
            });
            st.sample_start = Instant::now();
            st.sample_bytes = 0;
        }
        drop(st);
        self.room.notify_all();
    }

    /// Wake and refuse any waiting or later `admit` (the pipeline stopped).
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
    }
}

fn cap(target: Option<Duration>, st: &State) -> u64 {
    match (target, st.rate) {
        (None, _) | (_, None) => MAX_BYTES,
        (Some(t), Some(rate)) => ((rate * t.as_secs_f64()) as u64).clamp(MIN_BYTES, MAX_BYTES),
    }
}

/// Closes the read-ahead when dropped, so the tokenizer never waits on a
/// pipeline that ended (error or not).
pub struct CloseOnDrop(pub std::sync::Arc<ReadAhead>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unmeasured_rate_allows_the_ceiling_then_follows_the_drain() {
        let ra = ReadAhead::new(Some(Duration::from_millis(100)));
        assert_eq!(ra.cap(), MAX_BYTES);
        assert!(ra.admit(2 << 20));
        std::thread::sleep(SAMPLE + Duration::from_millis(10));
        ra.written();
        // About 2 MiB in ~60 ms: ~35 MB/s, so 100 ms is under the floor.
        assert_eq!(ra.cap(), MIN_BYTES);
    }

    #[test]
    fn admit_waits_for_room_and_close_releases_it() {
        let ra = Arc::new(ReadAhead::new(Some(Duration::from_millis(1))));
        assert!(ra.admit(MIN_BYTES));
        std::thread::sleep(SAMPLE + Duration::from_millis(10));
        ra.written();
        assert!(ra.admit(MIN_BYTES));
        // Full now: a second batch waits until the first is written.
        let r2 = ra.clone();
        let t = std::thread::spawn(move || r2.admit(1));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        ra.written();
        assert!(t.join().unwrap());
        // Closed: a waiting admit returns false.
        let r3 = ra.clone();
        let t = std::thread::spawn(move || r3.admit(MAX_BYTES));
        std::thread::sleep(Duration::from_millis(50));
        ra.close();
        assert!(!t.join().unwrap());
    }

    #[test]
    fn a_single_batch_larger_than_the_cap_still_goes() {
        let ra = ReadAhead::new(Some(Duration::from_millis(1)));
        assert!(ra.admit(MAX_BYTES * 2));
        ra.written();
        assert!(ra.admit(MAX_BYTES * 2));
    }
}
