//! The WAN side of `migrate disk-send`: the writer puts prepared batches,
//! flushes and pull answers on the connection in order; the reader takes
//! the receiver's acknowledgements, pulls and last word off it.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{Failure, Queued, SharedPullable, Waiters};
use crate::migrate::disk::report::DiskReport;
use crate::migrate::disk::wire::{read_frame, write_frame, DiskFrame};
use crate::migrate::error::{AgentError, Result};
use crate::migrate::link::{WanReader, WanWriter};
use crate::store::ChunkId;

fn add_report(into: &mut DiskReport, b: &DiskReport) {
    into.detail.blocks.add(&b.detail.blocks);
    into.wan.add(&b.wan);
    into.detail.bytes_written += b.detail.bytes_written;
}

/// Write prepared batches and flushes to the WAN in queue order.
pub(super) async fn wan_writer(
    mut w: WanWriter,
    mut queue: mpsc::Receiver<Queued>,
    mut pulls: mpsc::Receiver<DiskFrame>,
    waiters: Waiters,
    failed: Failure,
    report: Arc<Mutex<DiskReport>>,
) -> Result<()> {
    let mut flush_seq = 0u64;
    let mut ended = false;
    let result: Result<()> = async {
        loop {
            // Answers to pulls first: the receiver is waiting on them.
            let q = tokio::select! {
                biased;
                p = pulls.recv() => match p {
                    Some(f) => {
                        let n = write_frame(&mut w, &f).await?;
                        let mut r = report.lock();
                        r.wan.pulled += n;
                        r.wan.total += n;
                        continue;
                    }
                    // The reader got the receiver's last word.
                    None if ended => return Ok(()),
                    None => return Err(AgentError::Peer("receiver stopped early".into())),
                },
                q = queue.recv(), if !ended => q,
            };
            let Some(q) = q else {
                let n = write_frame(&mut w, &DiskFrame::End).await?;
                let mut r = report.lock();
                r.wan.framing += n;
                r.wan.total += n;
                ended = true;
                continue;
            };
            if let Some(why) = failed.get() {
                return Err(AgentError::Peer(why));
            }
            match q {
                Queued::Batch(task) => {
                    let p = task
                        .await
                        .map_err(|e| AgentError::Internal(format!("batch task: {e}")))??;
                    w.write_all(&p.frame)
                        .await
                        .map_err(|e| AgentError::io("WAN connection", e))?;
                    let mut r = report.lock();
                    add_report(&mut r, &p.report);
                    // Site queries cross the WAN too (the site is at the destination).
                    r.wan.total += p.frame.len() as u64 + p.report.wan.queries;
                }
                Queued::Flush(done) => {
                    flush_seq += 1;
                    waiters.lock().insert(flush_seq, done);
                    let n = write_frame(&mut w, &DiskFrame::Flush { seq: flush_seq }).await?;
                    let mut r = report.lock();
                    // The receiver's Flushed comes back the same size.
                    r.wan.framing += 2 * n;
                    r.wan.total += 2 * n;
                }
            }
        }
    }
    .await;
    if let Err(e) = &result {
        failed.set(e.to_string());
        // Fail every flush waiting or queued: QEMU must see the error.
        for (_, w) in waiters.lock().drain() {
            let _ = w.send(Err(e.to_string()));
        }
        queue.close();
        while let Ok(q) = queue.try_recv() {
            if let Queued::Flush(done) = q {
                let _ = done.send(Err(e.to_string()));
            }
        }
    }
    result
}

/// Read the receiver's flush acknowledgements and its last word.
pub(super) async fn wan_reader(
    rd: WanReader,
    waiters: Waiters,
    failed: Failure,
    pullable: SharedPullable,
    pulls: mpsc::Sender<DiskFrame>,
) -> Result<(bool, String)> {
    let mut rd = BufReader::new(rd);
    loop {
        let f = match read_frame(&mut rd).await {
            Ok((f, _)) => f,
            Err(e) => {
                let why = format!("receiver connection lost: {e}");
                failed.set(why.clone());
                for (_, w) in waiters.lock().drain() {
                    let _ = w.send(Err(why.clone()));
                }
                return Err(AgentError::Peer(why));
            }
        };
        match f {
            DiskFrame::Flushed { seq } => {
                if let Some(w) = waiters.lock().remove(&seq) {
                    let _ = w.send(Ok(()));
                }
            }
            DiskFrame::Applied { seq } => pullable.lock().release_through(seq),
            DiskFrame::Pull(ids) => {
                let answer: Vec<(ChunkId, Option<Bytes>)> = {
                    let p = pullable.lock();
                    ids.iter()
                        .map(|id| (*id, p.blocks.get(id).map(|(b, _)| b.clone())))
                        .collect()
                };
                tracing::info!("receiver pulled {} blocks", answer.len());
                if pulls.send(DiskFrame::Pulled(answer)).await.is_err() {
                    return Err(AgentError::Peer("WAN writer stopped".into()));
                }
            }
            DiskFrame::Done { ok, message } => {
                if !ok {
                    let why = format!("receiver failed: {message}");
                    failed.set(why.clone());
                    for (_, w) in waiters.lock().drain() {
                        let _ = w.send(Err(why.clone()));
                    }
                }
                return Ok((ok, message));
            }
            other => {
                let why = format!("unexpected frame from the receiver: {other:?}");
                failed.set(why.clone());
                return Err(AgentError::Peer(why));
            }
        }
    }
}
