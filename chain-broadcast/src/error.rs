//! Errors of the chain.

use std::net::SocketAddr;

use crate::frame::FrameError;

/// Errors a sink or source returns; anything that converts into it works
/// (`std::io::Error`, `anyhow::Error`, strings).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong on one hop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket or file I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a valid frame.
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    /// A valid frame at the wrong moment.
    #[error("protocol violation: expected {expected}, got {got}")]
    Unexpected {
        /// What the state machine wanted.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The peer closed the connection.
    #[error("connection closed by peer while waiting for {0}")]
    Closed(&'static str),
    /// Nothing arrived (or could be sent) in time.
    #[error("timed out after {secs:.1}s ({what})")]
    Timeout {
        /// What we were doing.
        what: &'static str,
        /// The limit.
        secs: f64,
    },
    /// Chunk bytes that do not hash to their id.
    #[error("chunk {id} failed verification: {why}")]
    BadChunk {
        /// Claimed id (hex).
        id: String,
        /// What was wrong.
        why: String,
    },
    /// The peer sent an ERROR frame.
    #[error("peer reported error: {0}")]
    Peer(String),
    /// Invalid request (manifest, name, chain).
    #[error("invalid transfer: {0}")]
    Invalid(String),
    /// The sink or source failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A signed-session node refused the session (ticket, audience, digest).
    #[error("session refused: {0}")]
    Refused(String),
    /// A control frame whose tag does not verify under the session key.
    #[error("forged {0} frame: its tag does not verify under the session's control key")]
    Forged(&'static str),
    /// No node of the chain could be reached.
    #[error("no node reachable (last tried {0})")]
    NoNode(SocketAddr),
}

impl Error {
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        Error::Storage(e.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
