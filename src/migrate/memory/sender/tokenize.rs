//! The sender's input side: a reader thread takes QEMU's stream off the
//! blocking input, a tokenizer thread cuts it into batches of pages (with
//! their ids and guest-page keys) and computes the whole-stream digest.

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rayon::prelude::*;
use tokio::sync::mpsc;

use super::switchover::Switchover;
use super::{Piece, TokBatch};
use crate::migrate::error::{AgentError, Result};
use crate::migrate::memory::readahead::ReadAhead;
use crate::qemu::stream::{Token, Tokenizer};
use crate::store::ChunkId;

/// Longest a partial batch waits for more input before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(5);
/// Stream bytes per batch, whatever the page count.
const BATCH_BYTES: usize = 2 << 20;
const READ_CHUNK: usize = 256 << 10;

/// Reader + tokenizer: runs on its own threads (blocking stdin).
pub(super) fn tokenize_input<R: Read + Send + 'static>(
    mut input: R,
    batch_pages: usize,
    out: mpsc::Sender<Piece>,
    read_ahead: &ReadAhead,
    switchover: &Switchover,
) -> Result<()> {
    let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(8);
    let reader = std::thread::Builder::new()
        .name("migrate-read".into())
        .spawn(move || loop {
            let mut buf = vec![0u8; READ_CHUNK];
            match input.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if chunk_tx.send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = chunk_tx.send(Err(e));
                    return;
                }
            }
        })
        .map_err(|e| AgentError::io("starting the reader", e))?;

    let mut tok = Tokenizer::new();
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    let mut tokens = Vec::new();
    let mut pending_bytes = 0usize;
    let mut pages = 0usize;
    let mut since: Option<Instant> = None;
    let flush = |tokens: &mut Vec<Token>, tok: &mut Tokenizer| -> Result<()> {
        tok.flush_literal(tokens);
        if tokens.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(tokens);
        let stream_bytes: usize = batch
            .iter()
            .map(|t| match t {
                Token::Literal(b) | Token::Page(b) => b.len(),
            })
            .sum();
        // Wait here, not in QEMU's pipe buffer: while the WAN is behind,
        // QEMU must see the stream drain at the WAN's pace.
        if !read_ahead.admit(stream_bytes as u64) {
            return Err(AgentError::Internal("sender pipeline stopped".into()));
        }
        let ids = page_ids(&batch);
        let keys = tok.take_page_keys();
        out.blocking_send(Piece::Batch(TokBatch {
            tokens: batch,
            ids,
            keys,
        }))
        .map_err(|_| AgentError::Internal("sender pipeline stopped".into()))
    };
    loop {
        let msg = match since {
            None => chunk_rx.recv().map_err(|_| None),
            Some(t) => {
                let left = FLUSH_AFTER.saturating_sub(t.elapsed());
                chunk_rx.recv_timeout(left).map_err(|e| match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => Some(()),
                    std::sync::mpsc::RecvTimeoutError::Disconnected => None,
                })
            }
        };
        match msg {
            Ok(Ok(chunk)) => {
                digest.update(&chunk);
                let before = tokens.len();
                tok.feed(&chunk, &mut tokens);
                if let Some(why) = &tok.stats().unsupported {
                    return Err(AgentError::Unsupported(why.clone()));
                }
                if let Some(at) = tok.stats().switchover_at {
                    if !switchover.started() {
                        // Still to cross then: what the read-ahead admitted
                        // and the part of this batch before the marker.
                        let pending = pending_bytes as u64
                            + at.saturating_sub(tok.stats().bytes - chunk.len() as u64);
                        switchover.seen(at, read_ahead.in_flight() + pending);
                    }
                }
                pages += tokens[before..]
                    .iter()
                    .filter(|t| matches!(t, Token::Page(_)))
                    .count();
                pending_bytes += chunk.len();
                since.get_or_insert_with(Instant::now);
                if pages >= batch_pages || pending_bytes >= BATCH_BYTES {
                    flush(&mut tokens, &mut tok)?;
                    pages = 0;
                    pending_bytes = 0;
                    since = None;
                }
            }
            Ok(Err(e)) => return Err(AgentError::io("reading the migration stream", e)),
            Err(Some(())) => {
                flush(&mut tokens, &mut tok)?;
                pages = 0;
                pending_bytes = 0;
                since = None;
            }
            Err(None) => break,
        }
    }
    let _ = reader.join();
    tok.finish(&mut tokens);
    flush(&mut tokens, &mut tok)?;
    let stats = tok.stats().clone();
    out.blocking_send(Piece::End {
        stream_len: stats.bytes,
        digest: digest.digest128(),
        stats,
    })
    .map_err(|_| AgentError::Internal("sender pipeline stopped".into()))
}

/// BLAKE3 ids of a batch's pages, on all cores.
fn page_ids(tokens: &[Token]) -> Vec<ChunkId> {
    let pages: Vec<&Bytes> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Page(p) => Some(p),
            Token::Literal(_) => None,
        })
        .collect();
    pages.par_iter().map(|p| ChunkId::of(p)).collect()
}
