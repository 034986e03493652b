//! What a migration cost: WAN bytes by kind, pages by kind (as in
//! Shrinker's Fig. 6.4c), time, and QEMU's own downtime when known.

use serde::{Deserialize, Serialize};

/// Bytes that crossed the WAN, by what they carried.
///
/// With compression, literal bytes and raw pages travel in one zstd blob
/// per batch; `compressed` is that blob's size on the wire and `raw` /
/// `literal` stay 0 for compressed batches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WanBytes {
    /// Zero-page records (address + one byte), part of the literal bytes.
    pub zero: u64,
    /// Stream bytes other than pages, sent uncompressed.
    pub literal: u64,
    /// Page bytes sent uncompressed.
    pub raw: u64,
    /// zstd blobs (literal bytes and pages).
    pub compressed: u64,
    /// Page ids sent instead of pages.
    pub by_hash: u64,
    /// Pages the receiver pulled from its sender (request + answer).
    pub pulled: u64,
    /// Frame headers and operation lists.
    pub framing: u64,
    /// `have` / `claim` queries to the destination site (bodies, both ways).
    pub queries: u64,
    pub total: u64,
}

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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VmReport {
    pub vm: String,
    pub group: Option<String>,
    pub stream_bytes: u64,
    pub wan: WanBytes,
    pub pages: PageCounts,
    /// Bytes saved by the redundancy cache and by page deltas.
    #[serde(default)]
    pub saved: SavedBytes,
    pub seconds: f64,
    /// QEMU's `query-migrate` downtime, filled in by whoever asked QEMU.
    pub downtime_ms: Option<u64>,
    /// Where and why the tokenizer stopped parsing (device state, ...).
    pub passthrough_from: Option<u64>,
    pub passthrough_reason: Option<String>,
    /// Receiver side: whether the rebuilt stream matched the sender's digest.
    pub verified: bool,
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
    pub all_verified: bool,
}

impl WanBytes {
    fn add(&mut self, o: &WanBytes) {
        self.zero += o.zero;
        self.literal += o.literal;
        self.raw += o.raw;
        self.compressed += o.compressed;
        self.by_hash += o.by_hash;
        self.pulled += o.pulled;
        self.framing += o.framing;
        self.queries += o.queries;
        self.total += o.total;
    }
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
            g.stream_bytes += v.stream_bytes;
            g.wan.add(&v.wan);
            g.pages.add(&v.pages);
            g.saved.add(&v.saved);
            g.seconds = g.seconds.max(v.seconds);
            g.max_downtime_ms = match (g.max_downtime_ms, v.downtime_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            g.all_verified &= v.verified;
        }
        g.vms = vms;
        g
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

impl std::fmt::Display for VmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "vm {}{}: stream {:.1} MiB, WAN {:.2} MiB ({:.1} %), {:.2} s{}{}",
            self.vm,
            self.group
                .as_deref()
                .map(|g| format!(" (group {g})"))
                .unwrap_or_default(),
            mib(self.stream_bytes),
            mib(self.wan.total),
            if self.stream_bytes > 0 {
                100.0 * self.wan.total as f64 / self.stream_bytes as f64
            } else {
                0.0
            },
            self.seconds,
            self.downtime_ms
                .map(|d| format!(", downtime {d} ms"))
                .unwrap_or_default(),
            if self.verified { ", verified" } else { "" },
        )?;
        write_counts(f, &self.wan, &self.pages, &self.saved)
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
        write_counts(f, &self.wan, &self.pages, &self.saved)
    }
}

fn write_counts(
    f: &mut std::fmt::Formatter<'_>,
    w: &WanBytes,
    p: &PageCounts,
    s: &SavedBytes,
) -> std::fmt::Result {
    writeln!(
        f,
        "  WAN bytes: zero {} literal {} raw {} compressed {} by-hash {} pulled {} framing {} queries {}",
        w.zero, w.literal, w.raw, w.compressed, w.by_hash, w.pulled, w.framing, w.queries
    )?;
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
