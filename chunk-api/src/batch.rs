//! Batched chunk transfer on the client side (frames in [`crate::frames`]):
//! thousands of 4 KiB pages per request for migration agents, each chunk
//! still checked against its id on arrival.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};

use strato_store::ChunkId;

use crate::client::{ChunkClient, ClientError, Result};
use crate::frames::{parse_frames, put_frame};
use crate::ids;
use crate::route::Route;
use crate::wire::MAX_CHUNK_LEN;

/// Request bodies stay below this many bytes of chunk data.
const BATCH_BYTES: usize = 8 << 20;
/// And below this many ids (hex text) per `get` request.
const BATCH_IDS: usize = 16 * 1024;

impl ChunkClient {
    /// Store many chunks upstream, in as few requests as the size bounds
    /// allow; durable there when this returns. Returns how many were new.
    pub async fn put_many(&self, chunks: &[(ChunkId, Bytes)]) -> Result<u64> {
        let what = "storing a batch of chunks";
        let mut new = 0u64;
        let mut body = BytesMut::new();
        let mut i = 0;
        while i < chunks.len() {
            body.clear();
            while i < chunks.len() && (body.is_empty() || body.len() < BATCH_BYTES) {
                put_frame(&mut body, &chunks[i].0, &chunks[i].1);
                i += 1;
            }
            let (status, resp) = self
                .send(
                    what,
                    Method::POST,
                    &Route::PutBatch.path_and_query(),
                    body.split().freeze(),
                )
                .await?;
            if status != StatusCode::OK {
                return Err(Self::status_error(what, status, &resp));
            }
            let text = String::from_utf8_lossy(&resp);
            new += text
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| ClientError::Invalid {
                    what: what.to_string(),
                    why: format!("unexpected answer {text:?}"),
                })?;
        }
        Ok(new)
    }

    /// Fetch the chunks among `ids` that the endpoint holds (absent ones are
    /// simply missing from the map). Every chunk is checked against its id;
    /// one that does not match fails the whole call.
    pub async fn get_many(&self, ids: &[ChunkId]) -> Result<HashMap<ChunkId, Bytes>> {
        let what = "fetching a batch of chunks";
        let mut out = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(BATCH_IDS) {
            let (status, resp) = self
                .send(
                    what,
                    Method::POST,
                    &Route::GetBatch.path_and_query(),
                    ids::encode(batch),
                )
                .await?;
            if status != StatusCode::OK {
                return Err(Self::status_error(what, status, &resp));
            }
            let frames = parse_frames(&resp, MAX_CHUNK_LEN).map_err(|e| ClientError::Invalid {
                what: what.to_string(),
                why: e.to_string(),
            })?;
            let checked = tokio::task::spawn_blocking(move || {
                frames
                    .into_iter()
                    .map(|(id, data)| {
                        if ChunkId::of(&data) == id {
                            Ok((id, data))
                        } else {
                            Err(ClientError::Integrity(id))
                        }
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await
            .map_err(|e| ClientError::Invalid {
                what: what.to_string(),
                why: format!("verification task failed: {e}"),
            })??;
            out.extend(checked);
        }
        Ok(out)
    }
}
