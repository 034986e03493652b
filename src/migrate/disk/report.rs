//! What a disk migration cost: 4 KiB blocks by how they crossed, WAN bytes
//! by kind, time. One report per agent (`migrate disk-send|disk-recv`).

use serde::{Deserialize, Serialize};

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

/// Bytes that crossed the WAN, by what they carried.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskWan {
    /// Zero-range operations.
    pub zero: u64,
    /// Ids sent instead of blocks (site and group).
    pub by_hash: u64,
    /// Literal bytes in uncompressed batches.
    pub literal_raw: u64,
    /// zstd blobs.
    pub literal_compressed: u64,
    /// Frame headers, offsets, ids of literal blocks, flush round trips.
    pub framing: u64,
    /// `have` / `claim` queries to the destination site (bodies, both ways).
    pub site_queries: u64,
    /// Pull requests and the blocks they brought back.
    pub pulled: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DiskReport {
    /// "send" or "recv".
    pub role: String,
    pub vm: String,
    pub group: Option<String>,
    /// Size of the destination export.
    pub disk_size: u64,
    /// Bytes QEMU wrote (or zeroed) through the agents.
    pub bytes_written: u64,
    pub blocks: DiskBlocks,
    pub wan: DiskWan,
    /// End-to-end NBD flushes.
    pub flushes: u64,
    /// Receiver: blocks fetched from the site, and stored there.
    pub site_fetched: u64,
    pub site_stored: u64,
    pub seconds: f64,
    /// Everything the source sent was written and flushed at the destination.
    pub completed: bool,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

impl std::fmt::Display for DiskReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.blocks;
        let w = &self.wan;
        writeln!(
            f,
            "disk-{} vm {}{}: {:.1} MiB written, WAN {:.2} MiB, {} flushes, {:.2} s{}",
            self.role,
            self.vm,
            self.group
                .as_deref()
                .map(|g| format!(" (group {g})"))
                .unwrap_or_default(),
            mib(self.bytes_written),
            mib(w.total),
            self.flushes,
            self.seconds,
            if self.completed {
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
        writeln!(
            f,
            "  WAN bytes: zero {} by-hash {} literal raw {} compressed {} framing {} site queries {} pulled {}",
            w.zero,
            w.by_hash,
            w.literal_raw,
            w.literal_compressed,
            w.framing,
            w.site_queries,
            w.pulled
        )?;
        if self.role == "recv" {
            writeln!(
                f,
                "  site: fetched {} stored {}",
                self.site_fetched, self.site_stored
            )?;
        }
        Ok(())
    }
}
