//! Per-node results, as they travel back up the chain.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// The result of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    /// The node, as named in the chain.
    pub addr: SocketAddr,
    /// True only if the node verified and stored the whole object.
    pub ok: bool,
    /// Why the node failed (or was bypassed).
    pub reason: Option<String>,
    /// Chunk bytes the node received from its upstream.
    pub bytes_received: u64,
    /// Bytes the node's sink wrote for this object.
    pub bytes_written: u64,
    /// From the node's HELLO to its result.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
}

impl NodeReport {
    /// A failed node that never reported itself.
    pub fn failed(addr: SocketAddr, reason: impl Into<String>) -> Self {
        NodeReport {
            addr,
            ok: false,
            reason: Some(reason.into()),
            bytes_received: 0,
            bytes_written: 0,
            elapsed: Duration::ZERO,
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// What [`crate::propagate`] returns.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Transfer id used on every hop.
    pub transfer_id: u64,
    /// One entry per node, in the order the nodes were given.
    pub nodes: Vec<NodeReport>,
    /// Chunk bytes the sender sent (the repository's cost).
    pub bytes_sent: u64,
    /// Object size.
    pub object_size: u64,
    /// Control frames (HAVE, REPORT) whose tag did not verify under the
    /// session key; each failed its link, which was bypassed.
    pub forged_control_frames: u64,
    /// Wall time of the whole propagation.
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
}

impl Report {
    /// True if every node succeeded.
    pub fn all_ok(&self) -> bool {
        self.nodes.iter().all(|n| n.ok)
    }

    /// The nodes that failed.
    pub fn failed(&self) -> impl Iterator<Item = &NodeReport> {
        self.nodes.iter().filter(|n| !n.ok)
    }

    /// The entry for `addr`.
    pub fn node(&self, addr: SocketAddr) -> Option<&NodeReport> {
        self.nodes.iter().find(|n| n.addr == addr)
    }
}

/// Orders collected reports by `nodes`. A node with no report is failed; a
/// node with both a failure and a success entry is failed, so nothing is
/// reported complete on doubtful evidence.
pub(crate) fn assemble(nodes: &[SocketAddr], collected: Vec<NodeReport>) -> Vec<NodeReport> {
    nodes
        .iter()
        .map(|addr| {
            let mine: Vec<&NodeReport> = collected.iter().filter(|r| r.addr == *addr).collect();
            if let Some(bad) = mine.iter().find(|r| !r.ok) {
                (*bad).clone()
            } else if let Some(good) = mine.first() {
                (*good).clone()
            } else {
                NodeReport::failed(*addr, "no report received")
            }
        })
        .collect()
}
