//! Errors of the disk-migration agents (`migrate disk-send|disk-recv`).

use crate::distribute::client::ClientError;
use crate::image::nbd_client::NbdClientError;
use crate::store::ChunkId;

use super::wire::WireError;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("destination NBD export: {0}")]
    Nbd(#[from] NbdClientError),
    #[error("destination site: {0}")]
    Site(#[from] ClientError),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("peer agent: {0}")]
    Peer(String),
    #[error("block {0} is unknown at the destination site: refusing to guess its bytes")]
    UnknownBlock(ChunkId),
    #[error("block {0} arrived with bytes that do not hash to its id")]
    BadBlock(ChunkId),
    #[error("{0}")]
    Range(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl DiskError {
    pub fn io(what: impl Into<String>, err: std::io::Error) -> DiskError {
        DiskError::Io {
            what: what.into(),
            err,
        }
    }
}

pub type Result<T, E = DiskError> = std::result::Result<T, E>;
