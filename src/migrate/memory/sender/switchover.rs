//! The sender's view of QEMU's stop-and-copy phase.
//!
//! The agents see QEMU only through its stream. QEMU stops the guest, then
//! writes its switchover command (QEMU 10) or the RAM section's END header,
//! the last dirty pages and the device state; the tokenizer marks the
//! first of those (`StreamStats::switchover_at`) and this records the
//! moment. From then on every millisecond the sender spends is guest pause,
//! so the main loop stops asking the site (see `sender`), and the writer
//! counts what still had to cross: the switchover part of the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::migrate::memory::report::SwitchoverReport;
use crate::migrate::report::unix_ms;

/// Shared by the tokenizer (which sees the marker), the main loop, the
/// site lookups and the writer.
pub(super) struct Switchover {
    at: OnceLock<Instant>,
    at_unix_ms: OnceLock<f64>,
    /// Wakes the main loop when the marker is read.
    tx: watch::Sender<Option<Instant>>,
    /// Stream offset of the marker.
    stream_at: AtomicU64,
    /// Stream bytes read but not yet on the WAN when the marker was read.
    queued: AtomicU64,
    wan_bytes: AtomicU64,
    pages_full: AtomicU64,
    pages_by_id: AtomicU64,
    site_round_trips: AtomicU64,
    lookups_given_up: AtomicU64,
    pulls: AtomicU64,
    last_byte: Mutex<Option<Instant>>,
}

impl Switchover {
    pub(super) fn new() -> (Switchover, watch::Receiver<Option<Instant>>) {
        let (tx, rx) = watch::channel(None);
        let s = Switchover {
            at: OnceLock::new(),
            at_unix_ms: OnceLock::new(),
            tx,
            stream_at: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            wan_bytes: AtomicU64::new(0),
            pages_full: AtomicU64::new(0),
            pages_by_id: AtomicU64::new(0),
            site_round_trips: AtomicU64::new(0),
            lookups_given_up: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            last_byte: Mutex::new(None),
        };
        (s, rx)
    }

    /// The tokenizer read the marker at `stream_at`, with `queued` stream
    /// bytes not yet on the WAN. Only the first call counts.
    pub(super) fn seen(&self, stream_at: u64, queued: u64) {
        let now = Instant::now();
        if self.at.set(now).is_err() {
            return;
        }
        let _ = self.at_unix_ms.set(unix_ms());
        self.stream_at.store(stream_at, Ordering::Relaxed);
        self.queued.store(queued, Ordering::Relaxed);
        self.tx.send_replace(Some(now));
        tracing::info!(
            stream_at,
            queued,
            "switchover: QEMU stopped the guest (stop-and-copy begins)"
        );
    }

    pub(super) fn started(&self) -> bool {
        self.at.get().is_some()
    }

    /// A frame went on the socket.
    pub(super) fn wrote(&self, wan_bytes: u64, pages_full: u64, pages_by_id: u64) {
        if !self.started() {
            return;
        }
        self.wan_bytes.fetch_add(wan_bytes, Ordering::Relaxed);
        self.pages_full.fetch_add(pages_full, Ordering::Relaxed);
        self.pages_by_id.fetch_add(pages_by_id, Ordering::Relaxed);
        *self.last_byte.lock() = Some(Instant::now());
    }

    /// A site request (`have`, `claim`) answered after the marker: a round
    /// trip on the critical path.
    pub(super) fn site_answer(&self) {
        if self.started() {
            self.site_round_trips.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Batches whose site answers the main loop stopped waiting for.
    pub(super) fn gave_up(&self, batches: u64) {
        self.lookups_given_up.fetch_add(batches, Ordering::Relaxed);
    }

    /// A pull answered after the marker.
    pub(super) fn pulled(&self) {
        if self.started() {
            self.pulls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The report part, once the last byte is out (`None`: no marker, e.g.
    /// a stream QEMU did not write or one cut short).
    pub(super) fn report(
        &self,
        stream_len: u64,
        stream_pages_after: u64,
    ) -> Option<SwitchoverReport> {
        let at = *self.at.get()?;
        let last = self.last_byte.lock().unwrap_or(at);
        let stream_at = self.stream_at.load(Ordering::Relaxed);
        let after = last.saturating_duration_since(at);
        let at_unix_ms = self.at_unix_ms.get().copied().unwrap_or_default();
        Some(SwitchoverReport {
            stop_seen_unix_ms: at_unix_ms,
            last_byte_unix_ms: at_unix_ms + ms(after),
            stop_to_last_byte_ms: ms(after),
            queued_bytes: self.queued.load(Ordering::Relaxed),
            stream_bytes: stream_len.saturating_sub(stream_at),
            stream_pages: stream_pages_after,
            wan_bytes: self.wan_bytes.load(Ordering::Relaxed),
            pages_full: self.pages_full.load(Ordering::Relaxed),
            pages_by_id: self.pages_by_id.load(Ordering::Relaxed),
            site_round_trips: self.site_round_trips.load(Ordering::Relaxed),
            lookups_given_up: self.lookups_given_up.load(Ordering::Relaxed),
            pulls: self.pulls.load(Ordering::Relaxed),
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How long the main loop still waits, after the marker, for site answers
/// already asked for: about what such an answer has been taking (`typical`),
/// never more than `LATE_ANSWER_MAX`. Past it the batch goes by what the
/// sender knows, the rest literally: a site that stalls costs at most this.
pub(super) fn late_answer_grace(typical: Option<Duration>) -> Duration {
    typical
        .map_or(LATE_ANSWER_MAX, |t| t * 2)
        .clamp(LATE_ANSWER_MIN, LATE_ANSWER_MAX)
}

const LATE_ANSWER_MIN: Duration = Duration::from_millis(20);
const LATE_ANSWER_MAX: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_after_the_marker_and_only_the_first_marker() {
        let (s, rx) = Switchover::new();
        s.wrote(100, 1, 1);
        s.site_answer();
        assert!(!s.started());
        assert!(rx.borrow().is_none());
        assert!(s.report(10, 0).is_none());
        s.seen(4, 7);
        s.seen(9, 9);
        assert!(rx.borrow().is_some());
        s.wrote(50, 2, 3);
        s.site_answer();
        s.pulled();
        s.gave_up(2);
        let r = s.report(10, 5).unwrap();
        assert_eq!(r.stream_bytes, 6);
        assert_eq!(r.queued_bytes, 7);
        assert_eq!(r.stream_pages, 5);
        assert_eq!((r.wan_bytes, r.pages_full, r.pages_by_id), (50, 2, 3));
        assert_eq!((r.site_round_trips, r.lookups_given_up, r.pulls), (1, 2, 1));
        assert!(r.stop_to_last_byte_ms >= 0.0);
        assert!(r.last_byte_unix_ms >= r.stop_seen_unix_ms);
    }

    #[test]
    fn grace_follows_the_answers_within_bounds() {
        assert_eq!(late_answer_grace(None), LATE_ANSWER_MAX);
        assert_eq!(
            late_answer_grace(Some(Duration::from_millis(30))),
            Duration::from_millis(60)
        );
        assert_eq!(late_answer_grace(Some(Duration::ZERO)), LATE_ANSWER_MIN);
        assert_eq!(
            late_answer_grace(Some(Duration::from_secs(5))),
            LATE_ANSWER_MAX
        );
    }
}
