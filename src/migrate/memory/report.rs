//! What a memory migration cost: the agents' common report
//! (`migrate::report`: WAN bytes by kind, time) with pages by kind (as in
//! Shrinker's Fig. 6.4c) and QEMU's own downtime when known; the group's
//! sum of its senders' reports; the receiver's view.

use serde::{Deserialize, Serialize};

use crate::migrate::report::{mib, AgentReport, WanBytes};

/// Pages of the stream by how they crossed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageCounts {
    pub zero: u64,
    /// Sent in full (raw or compressed).
    pub sent: u64,
    /// By id: the destination site already held them.
    pub site: u64,
    /// By id: another agent of the group claimed them first.
    pub group: u64,
    /// By id: this migration sent them earlier.
    pub repeat: u64,
    /// By id, then pulled back from the sender.
    pub pulled: u64,
    /// Of `sent`: as redundancy-cache block references (CloudNet §4.2).
    #[serde(default)]
    pub cache: u64,
    /// Of `sent`: as a delta against the version sent before (CloudNet §4.3).
    #[serde(default)]
    pub delta: u64,
}

/// Page bytes the codec kept off the WAN (before zstd, which applies to
/// what is left).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedBytes {
    /// By redundancy-cache hits.
    pub cache: u64,
    /// By page deltas.
    pub delta: u64,
}

impl SavedBytes {
    fn add(&mut self, o: &SavedBytes) {
        self.cache += o.cache;
        self.delta += o.delta;
    }
}

/// One VM's migration, as seen by its sender.
pub type VmReport = AgentReport<MemoryDetail>;

/// What only a memory sender counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MemoryDetail {
    pub stream_bytes: u64,
    pub pages: PageCounts,
    /// Bytes saved by the redundancy cache and by page deltas.
    #[serde(default)]
    pub saved: SavedBytes,
    /// QEMU's `query-migrate` downtime, filled in by whoever asked QEMU.
    pub downtime_ms: Option<u64>,
    /// Where and why the tokenizer stopped parsing (device state, ...).
    pub passthrough_from: Option<u64>,
    pub passthrough_reason: Option<String>,
    /// Receiver side: whether the rebuilt stream matched the sender's digest.
    pub verified: bool,
    /// QEMU's stop-and-copy phase as the sender saw it (`None`: the stream
    /// showed no switchover).
    #[serde(default)]
    pub switchover: Option<SwitchoverReport>,
}

/// The sender's stop-and-copy phase: from reading QEMU's switchover marker
/// (QEMU writes it after stopping the guest) to the sender's last byte on
/// the WAN. All of it is guest pause.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SwitchoverReport {
    /// When the sender read the marker, wall-clock ms since the epoch
    /// (QEMU's events carry the same clock).
    pub stop_seen_unix_ms: f64,
    /// When the sender's last byte (the End frame) went on the socket.
    pub last_byte_unix_ms: f64,
    pub stop_to_last_byte_ms: f64,
    /// Stream bytes read before the marker but not yet on the WAN then.
    pub queued_bytes: u64,
    /// Stream bytes from the marker on (QEMU's last pass, device state).
    pub stream_bytes: u64,
    /// Pages in the stream after the marker.
    pub stream_pages: u64,
    /// Frame bytes written after the marker (the backlog included).
    pub wan_bytes: u64,
    /// Pages in frames written after the marker: in full, by id.
    pub pages_full: u64,
    pub pages_by_id: u64,
    /// Site requests (`have`, `claim`) answered after the marker: round
    /// trips on the critical path.
    pub site_round_trips: u64,
    /// Batches whose site answers were still out at the marker plus the
    /// grace, and were given up (sent by what the sender knew).
    pub lookups_given_up: u64,
    /// Pull requests from the receiver answered after the marker.
    pub pulls: u64,
}

/// Several VMs migrated as one group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupReport {
    pub group: Option<String>,
    pub vms: Vec<VmReport>,
    pub stream_bytes: u64,
    pub wan: WanBytes,
    pub pages: PageCounts,
    #[serde(default)]
    pub saved: SavedBytes,
    /// The slowest VM's time (they migrate in parallel).
    pub seconds: f64,
    pub max_downtime_ms: Option<u64>,
    /// The slowest VM's marker-to-last-byte time.
    #[serde(default)]
    pub max_stop_to_last_byte_ms: Option<f64>,
    pub all_verified: bool,
}

impl PageCounts {
    fn add(&mut self, o: &PageCounts) {
        self.zero += o.zero;
        self.sent += o.sent;
        self.site += o.site;
        self.group += o.group;
        self.repeat += o.repeat;
        self.pulled += o.pulled;
        self.cache += o.cache;
        self.delta += o.delta;
    }
}

impl GroupReport {
    pub fn of(vms: Vec<VmReport>) -> GroupReport {
        let mut g = GroupReport {
            group: vms.first().and_then(|v| v.group.clone()),
            all_verified: !vms.is_empty(),
            ..Default::default()
        };
        for v in &vms {
            let d = &v.detail;
            g.stream_bytes += d.stream_bytes;
            g.wan.add(&v.wan);
            g.pages.add(&d.pages);
            g.saved.add(&d.saved);
            g.seconds = g.seconds.max(v.seconds);
            g.max_downtime_ms = match (g.max_downtime_ms, d.downtime_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            if let Some(s) = &d.switchover {
                g.max_stop_to_last_byte_ms = Some(
                    g.max_stop_to_last_byte_ms
                        .map_or(s.stop_to_last_byte_ms, |m| m.max(s.stop_to_last_byte_ms)),
                );
            }
            g.all_verified &= d.verified;
        }
        g.vms = vms;
        g
    }
}

impl std::fmt::Display for VmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.detail;
        writeln!(
            f,
            "{}: stream {:.1} MiB, WAN {:.2} MiB ({:.1} %), {:.2} s{}{}",
            self.who(),
            mib(d.stream_bytes),
            mib(self.wan.total),
            if d.stream_bytes > 0 {
                100.0 * self.wan.total as f64 / d.stream_bytes as f64
            } else {
                0.0
            },
            self.seconds,
            d.downtime_ms
                .map(|d| format!(", downtime {d} ms"))
                .unwrap_or_default(),
            if d.verified { ", verified" } else { "" },
        )?;
        write_counts(f, &self.wan, &d.pages, &d.saved)?;
        if let Some(s) = &d.switchover {
            writeln!(f, "  {s}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for SwitchoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "switchover: last byte {:.0} ms after QEMU stopped the guest; queued then {:.2} MiB; \
             after it: stream {:.2} MiB ({} pages), WAN {:.2} MiB (pages in full {}, by id {}), \
             site round trips {}, site answers given up {}, pulls {}",
            self.stop_to_last_byte_ms,
            mib(self.queued_bytes),
            mib(self.stream_bytes),
            self.stream_pages,
            mib(self.wan_bytes),
            self.pages_full,
            self.pages_by_id,
            self.site_round_trips,
            self.lookups_given_up,
            self.pulls
        )
    }
}

impl std::fmt::Display for GroupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for v in &self.vms {
            write!(f, "{v}")?;
        }
        writeln!(
            f,
            "group {}: {} VMs, stream {:.1} MiB, WAN {:.2} MiB, {:.2} s{}",
            self.group.as_deref().unwrap_or("-"),
            self.vms.len(),
            mib(self.stream_bytes),
            mib(self.wan.total),
            self.seconds,
            if self.all_verified {
                ", all verified"
            } else {
                ""
            }
        )?;
        if let Some(ms) = self.max_stop_to_last_byte_ms {
            writeln!(
                f,
                "  slowest switchover: last byte {ms:.0} ms after the stop"
            )?;
        }
        write_counts(f, &self.wan, &self.pages, &self.saved)
    }
}

/// The receiver's view of one migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReceiverReport {
    pub vm: String,
    pub group: Option<String>,
    pub stream_bytes: u64,
    pub wan_bytes: u64,
    pub pages_raw: u64,
    pub pages_local: u64,
    pub pages_site: u64,
    pub pages_pulled: u64,
    pub pages_stored: u64,
    pub store_errors: u64,
    pub seconds: f64,
    pub verified: bool,
    /// Pages found at the site only after waiting (another agent of the
    /// group was still sending them), of `pages_site`.
    #[serde(default)]
    pub pages_waited: u64,
    /// When the last byte of the rebuilt stream went to QEMU, wall-clock
    /// ms since the epoch.
    #[serde(default)]
    pub last_output_unix_ms: f64,
    /// The object the stored pages were kept as (`--keep`), if any.
    #[serde(default)]
    pub kept: Option<KeptPages>,
}

/// Pages kept as an object at the site after a migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeptPages {
    pub bucket: String,
    pub key: String,
    pub pages: u64,
    /// Why keeping failed (the migration itself succeeded).
    pub error: Option<String>,
}

fn write_counts(
    f: &mut std::fmt::Formatter<'_>,
    w: &WanBytes,
    p: &PageCounts,
    s: &SavedBytes,
) -> std::fmt::Result {
    writeln!(f, "  {w}")?;
    writeln!(
        f,
        "  pages: zero {} sent {} (cache {} delta {}) site {} group {} repeat {} pulled {}",
        p.zero, p.sent, p.cache, p.delta, p.site, p.group, p.repeat, p.pulled
    )?;
    writeln!(
        f,
        "  saved before zstd: by cache {} by deltas {}",
        s.cache, s.delta
    )
}
