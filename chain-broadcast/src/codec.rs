//! Frames over an async byte stream, with timeouts.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use crate::error::{Error, Result};
use crate::frame::{self, decode_frame, Frame, FrameError, HEADER_LEN};
use crate::manifest::ChunkId;

/// Reads frames; a frame larger than `max_frame` is refused from its header,
/// before its payload is buffered.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R, max_frame: u32) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(256 << 10),
            max_frame,
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, self.max_frame)? {
                return Ok(Some(f));
            }
            // Grow towards the frame's size in steps, so a lying length
            // costs nothing before the bytes actually arrive.
            let want = if self.buf.len() >= HEADER_LEN {
                let len = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
                HEADER_LEN + len as usize - self.buf.len()
            } else {
                HEADER_LEN
            };
            self.buf.reserve(want.clamp(64 << 10, 1 << 20));
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::UnexpectedEof.into())
                };
            }
        }
    }

    /// Reads and drops everything until the peer closes (or fails).
    pub async fn discard_until_eof(&mut self) {
        self.buf.clear();
        let mut scratch = vec![0u8; 64 << 10];
        while let Ok(n) = self.inner.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    }

    /// The next frame within `limit`; end of stream is an error.
    pub async fn read_timeout(&mut self, limit: Duration, what: &'static str) -> Result<Frame> {
        match tokio::time::timeout(limit, self.read_frame()).await {
            Ok(Ok(Some(f))) => Ok(f),
            Ok(Ok(None)) => Err(Error::Closed(what)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                what,
                secs: limit.as_secs_f64(),
            }),
        }
    }
}

/// When a peer was last heard from. A peer that is blocked but alive (its
/// own successor is slow, or being bypassed) keeps sending KEEPALIVE, so a
/// write to it that makes no progress is not a failure while it is heard.
#[derive(Debug)]
pub struct Liveness {
    base: Instant,
    last_ms: AtomicU64,
}

impl Liveness {
    /// Heard just now.
    pub fn new() -> Arc<Self> {
        Arc::new(Liveness {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Records that the peer said something.
    pub fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether the peer was heard within `d`.
    pub fn heard_within(&self, d: Duration) -> bool {
        let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last.elapsed() < d
    }
}

/// Runs one write; past `limit` without completing it fails, unless the
/// peer is still heard from, in which case it keeps waiting.
async fn timed(
    limit: Duration,
    live: Option<&Liveness>,
    what: &'static str,
    fut: impl Future<Output = std::io::Result<()>>,
) -> Result<()> {
    tokio::pin!(fut);
    loop {
        match tokio::time::timeout(limit, &mut fut).await {
            Ok(r) => return Ok(r?),
            Err(_) => match live {
                Some(l) if l.heard_within(limit) => continue,
                _ => {
                    return Err(Error::Timeout {
                        what,
                        secs: limit.as_secs_f64(),
                    })
                }
            },
        }
    }
}

/// Writes frames through a buffer; callers flush when they run out of input.
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    timeout: Duration,
    live: Option<Arc<Liveness>>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a stream; every write or flush must finish within `timeout`.
    pub fn new(inner: W, timeout: Duration) -> Self {
        FrameWriter {
            inner: BufWriter::with_capacity(256 << 10, inner),
            timeout,
            live: None,
        }
    }

    /// Lets writes outlast the timeout while `live` says the peer is heard.
    pub fn with_liveness(mut self, live: Arc<Liveness>) -> Self {
        self.live = Some(live);
        self
    }

    /// Changes the limit on each write.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Queues a non-DATA frame.
    pub async fn send(&mut self, f: &Frame) -> Result<()> {
        let bytes = frame::encode(f);
        let live = self.live.as_deref();
        timed(
            self.timeout,
            live,
            "sending a frame",
            self.inner.write_all(&bytes),
        )
        .await
    }

    /// Queues a DATA frame without copying the chunk.
    pub async fn send_data(&mut self, id: &ChunkId, data: &Bytes) -> Result<()> {
        let h = frame::data_header(id, data.len());
        let inner = &mut self.inner;
        let fut = async move {
            inner.write_all(&h).await?;
            inner.write_all(data).await
        };
        timed(self.timeout, self.live.as_deref(), "sending a chunk", fut).await
    }

    /// Pushes buffered frames to the socket.
    pub async fn flush(&mut self) -> Result<()> {
        let live = self.live.as_deref();
        timed(self.timeout, live, "flushing", self.inner.flush()).await
    }

    /// Sends one frame and flushes.
    pub async fn send_now(&mut self, f: &Frame) -> Result<()> {
        self.send(f).await?;
        self.flush().await
    }
}
