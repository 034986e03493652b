//! What one agent's migration cost, the same report for memory and disk
//! agents: who migrated, the bytes that crossed the WAN by kind, and the
//! time, plus what only one kind of agent counts (`memory::report`,
//! `disk::report`), flattened into the same JSON object.

use serde::{Deserialize, Serialize};

/// Bytes that crossed the WAN, by what they carried.
///
/// With compression, literal bytes and raw pages (or blocks) travel in one
/// zstd blob per batch; `compressed` is that blob's size on the wire and
/// `raw` / `literal` stay 0 for compressed batches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WanBytes {
    /// Zero-page records (memory: address + one byte) or zero ranges
    /// (disk: the operation). Already counted in `literal` (memory) or
    /// `framing` (disk), so not a part of `total` of its own.
    pub zero: u64,
    /// Bytes other than whole pages or blocks (memory: the rest of QEMU's
    /// stream; disk: unaligned writes), sent uncompressed.
    pub literal: u64,
    /// Page or block bytes sent uncompressed.
    pub raw: u64,
    /// zstd blobs (literal bytes and pages or blocks).
    pub compressed: u64,
    /// Ids sent instead of pages or blocks.
    pub by_hash: u64,
    /// What the receiver pulled from its sender (request + answer).
    pub pulled: u64,
    /// Frame headers, operation lists, flush round trips.
    pub framing: u64,
    /// `have` / `claim` queries to the destination site (bodies, both
    /// ways): the site is at the destination, so they cross the WAN too.
    pub queries: u64,
    pub total: u64,
}

impl WanBytes {
    pub fn add(&mut self, o: &WanBytes) {
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

    /// The parts that make up `total` (all but `zero`).
    pub fn sum_of_parts(&self) -> u64 {
        self.literal
            + self.raw
            + self.compressed
            + self.by_hash
            + self.pulled
            + self.framing
            + self.queries
    }
}

impl std::fmt::Display for WanBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WAN bytes: zero {} literal {} raw {} compressed {} by-hash {} pulled {} framing {} queries {}",
            self.zero,
            self.literal,
            self.raw,
            self.compressed,
            self.by_hash,
            self.pulled,
            self.framing,
            self.queries
        )
    }
}

/// One agent's migration. `detail` is what only memory or disk agents
/// count; its fields sit beside these in the JSON object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentReport<D> {
    pub vm: String,
    pub group: Option<String>,
    pub wan: WanBytes,
    pub seconds: f64,
    #[serde(flatten)]
    pub detail: D,
}

impl<D> AgentReport<D> {
    /// `vm NAME (group G)`, as report lines start.
    pub fn who(&self) -> String {
        format!(
            "vm {}{}",
            self.vm,
            self.group
                .as_deref()
                .map(|g| format!(" (group {g})"))
                .unwrap_or_default()
        )
    }
}

/// Wall-clock milliseconds since the epoch, for report timestamps (QEMU
/// stamps its events with the same clock, so a timeline lines both up).
pub fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Bytes as MiB, for report lines.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    struct Detail {
        verified: bool,
        pages: u64,
    }

    #[test]
    fn detail_fields_sit_beside_the_common_ones_and_read_back() {
        let r = AgentReport {
            vm: "vm1".into(),
            group: Some("g".into()),
            wan: WanBytes {
                raw: 5,
                total: 5,
                ..Default::default()
            },
            seconds: 1.5,
            detail: Detail {
                verified: true,
                pages: 3,
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["verified"], true);
        assert_eq!(v["pages"], 3);
        assert_eq!(v["wan"]["total"], 5);
        assert_eq!(v["vm"], "vm1");
        let back: AgentReport<Detail> = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.who(), "vm vm1 (group g)");
    }
}
