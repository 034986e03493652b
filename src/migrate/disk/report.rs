//! What a disk migration cost: the agents' common report
//! (`migrate::report`: WAN bytes by kind, time) with 4 KiB blocks by how
//! they crossed. One report per agent (`migrate disk-send|disk-recv`).

use serde::{Deserialize, Serialize};

use crate::migrate::report::{mib, AgentReport};

/// Blocks (4 KiB) of the writes QEMU's mirror made, by how they crossed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskBlocks {
    /// All-zero blocks and zeroed/trimmed ranges (in 4 KiB units, rounded up).
    pub zero: u64,
    /// By id: the destination site held them (image block index, chunks).
    pub by_hash: u64,
    /// By id: another sender of the migration group claimed them first.
    pub claimed_by_other: u64,
    /// Sent in full, uncompressed batches.
    pub literal_raw: u64,
    /// Sent in full inside zstd blobs.
    pub literal_compressed: u64,
    /// Bytes of writes not aligned to 4 KiB (sent literally, no id).
    pub unaligned_bytes: u64,
    /// Claimed-by-other blocks that never reached the site in time, pulled
    /// from the sender instead.
    pub pulled: u64,
}

/// One disk agent's migration.
pub type DiskReport = AgentReport<DiskDetail>;

/// What only a disk agent counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskDetail {
    /// "send" or "recv".
    pub role: String,
    /// Size of the destination export.
    pub disk_size: u64,
    /// Bytes QEMU wrote (or zeroed) through the agents.
    pub bytes_written: u64,
    pub blocks: DiskBlocks,
    /// End-to-end NBD flushes.
    pub flushes: u64,
    /// Receiver: blocks fetched from the site, and stored there.
    pub site_fetched: u64,
    pub site_stored: u64,
    /// Everything the source sent was written and flushed at the destination.
    pub completed: bool,
}

impl DiskBlocks {
    pub fn add(&mut self, o: &DiskBlocks) {
        self.zero += o.zero;
        self.by_hash += o.by_hash;
        self.claimed_by_other += o.claimed_by_other;
        self.literal_raw += o.literal_raw;
        self.literal_compressed += o.literal_compressed;
        self.unaligned_bytes += o.unaligned_bytes;
        self.pulled += o.pulled;
    }
}

impl std::fmt::Display for DiskReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.detail;
        let b = &d.blocks;
        writeln!(
            f,
            "disk-{} {}: {:.1} MiB written, WAN {:.2} MiB, {} flushes, {:.2} s{}",
            d.role,
            self.who(),
            mib(d.bytes_written),
            mib(self.wan.total),
            d.flushes,
            self.seconds,
            if d.completed {
                ", completed"
            } else {
                ", NOT completed"
            }
        )?;
        writeln!(
            f,
            "  blocks: zero {} by-hash {} claimed-by-other {} literal raw {} compressed {} pulled {}; unaligned bytes {}",
            b.zero,
            b.by_hash,
            b.claimed_by_other,
            b.literal_raw,
            b.literal_compressed,
            b.pulled,
            b.unaligned_bytes
        )?;
        writeln!(f, "  {}", self.wan)?;
        if d.role == "recv" {
            writeln!(
                f,
                "  site: fetched {} stored {}",
                d.site_fetched, d.site_stored
            )?;
        }
        Ok(())
    }
}
