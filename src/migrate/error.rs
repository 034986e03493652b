//! Errors of the migration agents (sender and receiver).

use crate::distribute::client::ClientError;
use crate::store::ChunkId;

use super::proto::WireError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("destination site: {0}")]
    Site(#[from] ClientError),
    #[error("peer agent: {0}")]
    Peer(String),
    #[error("page {0} is unknown at the destination site and to the sender: refusing to guess its bytes")]
    UnknownPage(ChunkId),
    #[error("page {0} arrived with bytes that do not hash to its id")]
    BadPage(ChunkId),
    #[error("rebuilt stream does not match the sender's ({0})")]
    Mismatch(String),
    #[error("{0}")]
    Timeout(String),
    #[error("unsupported migration setup: {0}")]
    Unsupported(String),
    #[error("internal: {0}")]
    Internal(String),
    #[error("page codec (redundancy cache / page deltas): {0}")]
    Codec(#[from] super::codec::rcache::CodecError),
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
