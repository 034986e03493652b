//! The one error type of the migration agents, memory (`migrate
//! send|recv`) and disk (`migrate disk-send|disk-recv`) alike.

use crate::image::nbd_client::NbdClientError;
use crate::store::ChunkId;
use chunk_api::ClientError;

use super::codec::rcache::CodecError;
use super::proto::WireError;

/// What an agent moves by id: guest pages (memory) or 4 KiB disk blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Page,
    Block,
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unit::Page => "page",
            Unit::Block => "block",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("destination site: {0}")]
    Site(#[from] ClientError),
    #[error("destination NBD export: {0}")]
    Nbd(#[from] NbdClientError),
    #[error("peer agent: {0}")]
    Peer(String),
    /// Content nobody could produce: never guessed, never zero-filled.
    #[error(
        "{0} {1} is unknown at the destination site and to the sender: refusing to guess its bytes"
    )]
    Unknown(Unit, ChunkId),
    #[error("{0} {1} arrived with bytes that do not hash to its id")]
    BadContent(Unit, ChunkId),
    #[error("rebuilt stream does not match the sender's ({0})")]
    Mismatch(String),
    #[error("{0}")]
    Timeout(String),
    /// A write outside the destination disk.
    #[error("{0}")]
    Range(String),
    #[error("unsupported migration setup: {0}")]
    Unsupported(String),
    #[error("internal: {0}")]
    Internal(String),
    #[error("page codec (redundancy cache / page deltas): {0}")]
    Codec(#[from] CodecError),
}

impl AgentError {
    pub fn io(what: impl Into<String>, err: std::io::Error) -> AgentError {
        AgentError::Io {
            what: what.into(),
            err,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
