//! One way to ask for chunks: [`ChunkSource`], implemented by a local
//! store, a repository's chunk API ([`ChunkClient`]) and, in the image
//! layer, the pseudo image. Pull, the chain glue, the multicast sender and
//! the server's fallback for `nbd serve --serve-chunks` all take a
//! `dyn ChunkSource`, so each new place chunks come from is one impl, not
//! one adapter per mechanism.

use async_trait::async_trait;
use bytes::Bytes;
use strato_store::{ChunkId, Store, StoreError};

use crate::client::{ChunkClient, ClientError};
use crate::wire::ManifestDoc;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// This source does not serve that object.
    #[error("{0} not found")]
    NotFound(String),
    /// The source is there but failed (I/O, upstream down, bad answer).
    #[error("{0}")]
    Failed(String),
}

impl From<ClientError> for SourceError {
    fn from(e: ClientError) -> Self {
        SourceError::Failed(e.to_string())
    }
}

/// Where manifests and chunk bytes come from.
#[async_trait]
pub trait ChunkSource: Send + Sync + 'static {
    /// The manifest of `bucket/key`.
    async fn manifest(&self, bucket: &str, key: &str) -> Result<ManifestDoc, SourceError>;
    /// The bytes of `id`, already verified against it, or `None` when this
    /// source does not hold the chunk.
    async fn chunk(&self, id: ChunkId) -> Result<Option<Bytes>, SourceError>;
}

/// A local store. Its reads are blocking disk I/O plus hashing, so they run
/// on tokio's blocking pool, off the reactor.
#[async_trait]
impl ChunkSource for Store {
    async fn manifest(&self, bucket: &str, key: &str) -> Result<ManifestDoc, SourceError> {
        let (store, b, k) = (self.clone(), bucket.to_string(), key.to_string());
        let found = tokio::task::spawn_blocking(move || store.manifest(&b, &k))
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        match found {
            Ok((rec, entries)) => Ok(ManifestDoc::of_record(bucket, key, &rec, &entries)),
            Err(e @ (StoreError::NoSuchKey { .. } | StoreError::NoSuchBucket(_))) => {
                Err(SourceError::NotFound(e.to_string()))
            }
            Err(e) => Err(SourceError::Failed(e.to_string())),
        }
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<Bytes>, SourceError> {
        let store = self.clone();
        let read = tokio::task::spawn_blocking(move || store.read_chunk(&id))
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?;
        match read {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::MissingChunk(_)) => Ok(None),
            Err(e) => Err(SourceError::Failed(e.to_string())),
        }
    }
}

/// A repository's chunk API; the client verifies every chunk it returns.
#[async_trait]
impl ChunkSource for ChunkClient {
    async fn manifest(&self, bucket: &str, key: &str) -> Result<ManifestDoc, SourceError> {
        match ChunkClient::manifest(self, bucket, key).await {
            Ok(m) => Ok(m),
            Err(e) if e.is_not_found() => Err(SourceError::NotFound(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    async fn chunk(&self, id: ChunkId) -> Result<Option<Bytes>, SourceError> {
        match self.get_chunk(&id).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
