//! The sender's answers to the receiver's pulls: pages sent by id are
//! kept in a bounded cache, in case their holder (the site, another agent
//! of the group) never delivers them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::migrate::link::{WanReader, WanWriter};
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::switchover::Switchover;
use crate::migrate::memory::wire::{self, Frame};
use crate::store::ChunkId;

/// Pages sent by id, kept (bounded, FIFO) so the receiver can pull them.
pub(super) type PageCache = crate::migrate::memory::pages::BoundedPages;

/// Serve the receiver's pulls until it acknowledges the end.
pub(super) async fn answer_pulls(
    mut rd: WanReader,
    wr: Arc<tokio::sync::Mutex<WanWriter>>,
    cache: Arc<Mutex<PageCache>>,
    pulled_bytes: Arc<AtomicU64>,
    pulled_pages: Arc<AtomicU64>,
    ack: oneshot::Sender<(bool, String)>,
    switchover: Arc<Switchover>,
) {
    loop {
        match wire::read_frame(&mut rd).await {
            Ok(Some(Frame::Pull(ids))) => {
                switchover.pulled();
                let pages: Vec<(ChunkId, Option<Bytes>)> = {
                    let c = cache.lock();
                    ids.iter().map(|id| (*id, c.get(id).cloned())).collect()
                };
                let found = pages.iter().filter(|(_, p)| p.is_some()).count();
                let frame = Frame::Pulled(pages).encode();
                pulled_pages.fetch_add(found as u64, Ordering::Relaxed);
                pulled_bytes
                    .fetch_add((frame.len() + 5 + 32 * ids.len()) as u64, Ordering::Relaxed);
                let mut w = wr.lock().await;
                if let Err(e) = w.write_all(&frame).await {
                    tracing::warn!("answering a pull: {e}");
                    return;
                }
            }
            Ok(Some(Frame::Ack { ok, message })) => {
                let _ = ack.send((ok, message));
                return;
            }
            Ok(Some(other)) => {
                tracing::warn!("unexpected frame from the receiver: {other:?}");
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("WAN connection: {e}");
                return;
            }
        }
    }
}
