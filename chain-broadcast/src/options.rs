//! Knobs of the sender and of each node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{NodeTrust, SessionAuth};
use crate::frame::DEFAULT_MAX_FRAME;

/// Settings of a propagation. The timeouts travel in HELLO so every hop of
/// one chain uses the same ones.
#[derive(Clone, Debug)]
pub struct Options {
    /// Limit on one TCP connect.
    pub connect_timeout: Duration,
    /// Limit on any single read or write while a peer should be active.
    /// Idle hops send KEEPALIVE at a third of it.
    pub io_timeout: Duration,
    /// Overall limit on waiting for the downstream REPORT after END.
    pub finish_timeout: Duration,
    /// Largest frame accepted (bounds chunk size and manifest size).
    pub max_frame: u32,
    /// Bytes of chunks queued between the sender's reader and its socket.
    /// Queues hold whole chunks: at least 2, at most 1024.
    pub queue_bytes: usize,
    /// Transfer id; random if `None`.
    pub transfer_id: Option<u64>,
    /// Live counters for progress bars and benchmarks.
    pub progress: Option<Arc<Progress>>,
    /// The repository's ticket and control secret: a signed session.
    pub session: Option<SessionAuth>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(20),
            finish_timeout: Duration::from_secs(600),
            max_frame: DEFAULT_MAX_FRAME,
            queue_bytes: 8 << 20,
            transfer_id: None,
            progress: None,
            session: None,
        }
    }
}

/// Settings of a node (`serve`). Timeouts come from each HELLO; these bound
/// what a node accepts before it has one.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Limit on receiving HELLO after accepting a connection.
    pub hello_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame: u32,
    /// Bytes of chunks queued between the stages of one hop (reader → store,
    /// reader → forwarder). Memory per transfer is about twice this plus
    /// socket buffers, whatever the object size.
    pub queue_bytes: usize,
    /// Connections served at once; more are refused with an ERROR (each
    /// may hold a manifest and its queues in memory).
    pub max_sessions: usize,
    /// Accept only signed sessions, checked against these keys and names
    /// (see [`crate::auth`]); `None` accepts any session.
    pub trust: Option<Arc<NodeTrust>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            hello_timeout: Duration::from_secs(20),
            max_frame: DEFAULT_MAX_FRAME,
            queue_bytes: 8 << 20,
            max_sessions: 64,
            trust: None,
        }
    }
}

/// Counters the sender updates as it goes.
#[derive(Debug, Default)]
pub struct Progress {
    /// Chunk bytes the sender must send (known after the HAVE exchange).
    pub bytes_planned: AtomicU64,
    /// Chunk bytes sent so far (resends after a bypass included).
    pub bytes_sent: AtomicU64,
    /// Chunks sent so far.
    pub chunks_sent: AtomicU64,
}

impl Progress {
    /// Fresh counters.
    pub fn new() -> Arc<Self> {
        Arc::new(Progress::default())
    }

    /// `(bytes_sent, bytes_planned)`.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.bytes_sent.load(Ordering::Relaxed),
            self.bytes_planned.load(Ordering::Relaxed),
        )
    }
}

/// Capacity, in chunks, of a queue holding about `bytes` of `manifest`'s
/// largest chunks.
pub(crate) fn queue_len(bytes: usize, manifest: &crate::manifest::Manifest) -> usize {
    let biggest = manifest
        .chunks
        .iter()
        .map(|c| c.len as usize)
        .max()
        .unwrap_or(1)
        .max(1);
    (bytes / biggest).clamp(2, 1024)
}
