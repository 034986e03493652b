//! A small async NBD client (fixed newstyle handshake, `NBD_OPT_GO`, simple
//! replies) for writing into an export, e.g. the one a destination QEMU
//! serves with `nbd-server-start` + `block-export-add` during a disk
//! migration.
//!
//! Requests are pipelined: [`NbdClient::submit`] sends one and returns a
//! receiver for its reply, so a caller keeps many in flight and waits for
//! them when it must (before a flush, before reusing a range).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex as SyncMutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex};

// The protocol's numbers, shared with the server side.
use super::nbd::{
    CLIENT_FIXED_NEWSTYLE, CLIENT_NO_ZEROES, CMD_DISC, CMD_FLUSH, CMD_WRITE, CMD_WRITE_ZEROES,
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, INFO_EXPORT, NBDMAGIC, OPT_GO, OPT_REPLY_MAGIC,
    REP_ACK, REP_INFO, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH,
    TFLAG_SEND_WRITE_ZEROES,
};

/// Largest option reply we read during the handshake.
const MAX_OPT_REPLY: u32 = 64 * 1024;
/// Largest single request payload we send (QEMU accepts 32 MiB).
pub const MAX_WRITE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NbdClientError {
    #[error("NBD connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("NBD server broke the protocol: {0}")]
    Protocol(String),
    #[error("NBD server refused export {export:?} (option reply {code:#x}: {message})")]
    Refused {
        export: String,
        code: u32,
        message: String,
    },
    #[error("NBD export {0:?} is read-only")]
    ReadOnly(String),
    #[error("NBD {what} at offset {offset} failed with error {errno}")]
    Request {
        what: &'static str,
        offset: u64,
        errno: u32,
    },
    #[error("NBD connection closed before the reply")]
    Closed,
}

pub type Result<T, E = NbdClientError> = std::result::Result<T, E>;

type Pending = Arc<SyncMutex<PendingMap>>;

#[derive(Default)]
struct PendingMap {
    waiting: HashMap<u64, oneshot::Sender<u32>>,
    /// Set once the reply reader stopped: no reply will come any more.
    dead: bool,
}

/// One connection to one export.
pub struct NbdClient {
    size: u64,
    flags: u16,
    export: String,
    w: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_cookie: std::sync::atomic::AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

/// What an awaited request answers: 0, or the server's errno.
pub struct Reply {
    what: &'static str,
    offset: u64,
    rx: oneshot::Receiver<u32>,
}

impl Reply {
    pub async fn wait(self) -> Result<()> {
        match self.rx.await {
            Ok(0) => Ok(()),
            Ok(errno) => Err(NbdClientError::Request {
                what: self.what,
                offset: self.offset,
                errno,
            }),
            Err(_) => Err(NbdClientError::Closed),
        }
    }
}

impl NbdClient {
    /// Connect to `addr` and open `export` for writing.
    pub async fn connect(addr: &str, export: &str) -> Result<NbdClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let (size, flags) = handshake(&mut r, &mut w, export).await?;
        if flags & TFLAG_READ_ONLY != 0 {
            return Err(NbdClientError::ReadOnly(export.to_string()));
        }
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_replies(r, pending.clone()));
        Ok(NbdClient {
            size,
            flags,
            export: export.to_string(),
            w: Mutex::new(w),
            pending,
            next_cookie: std::sync::atomic::AtomicU64::new(1),
            reader,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn export(&self) -> &str {
        &self.export
    }

    /// Send one write; its reply comes through the returned [`Reply`].
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<Reply> {
        self.submit(CMD_WRITE, "write", offset, data.len() as u32, data)
            .await
    }

    /// Zero a range: WRITE_ZEROES when the server offers it, else zero bytes.
    pub async fn write_zeroes(&self, offset: u64, len: u32) -> Result<Reply> {
        if self.flags & TFLAG_SEND_WRITE_ZEROES != 0 {
            self.submit(CMD_WRITE_ZEROES, "write-zeroes", offset, len, &[])
                .await
        } else {
            let zeros = vec![0u8; len as usize];
            self.write(offset, &zeros).await
        }
    }

    /// Flush: durable at the server once the reply says so. Only orders
    /// against requests whose replies already came (NBD semantics).
    pub async fn flush(&self) -> Result<Reply> {
        if self.flags & TFLAG_SEND_FLUSH == 0 {
            // Nothing to ask: the server has no volatile cache to flush.
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(0);
            return Ok(Reply {
                what: "flush",
                offset: 0,
                rx,
            });
        }
        self.submit(CMD_FLUSH, "flush", 0, 0, &[]).await
    }

    /// Say goodbye (NBD_CMD_DISC) and close.
    pub async fn disconnect(self) -> Result<()> {
        {
            let mut w = self.w.lock().await;
            let hdr = request_header(CMD_DISC, 0, 0, 0);
            w.write_all(&hdr).await?;
            w.shutdown().await?;
        }
        self.reader.abort();
        Ok(())
    }

    async fn submit(
        &self,
        kind: u16,
        what: &'static str,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<Reply> {
        let cookie = self
            .next_cookie
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            if p.dead {
                return Err(NbdClientError::Closed);
            }
            p.waiting.insert(cookie, tx);
        }
        let hdr = request_header(kind, cookie, offset, len);
        let mut w = self.w.lock().await;
        let sent = async {
            w.write_all(&hdr).await?;
            if !payload.is_empty() {
                w.write_all(payload).await?;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        if let Err(e) = sent {
            self.pending.lock().waiting.remove(&cookie);
            return Err(e.into());
        }
        Ok(Reply { what, offset, rx })
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn request_header(kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// Fixed newstyle handshake up to `NBD_OPT_GO`; returns (size, flags).
async fn handshake<R, W>(r: &mut R, w: &mut W, export: &str) -> Result<(u64, u16)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if r.read_u64().await? != NBDMAGIC || r.read_u64().await? != IHAVEOPT {
        return Err(NbdClientError::Protocol(
            "not a newstyle NBD server (bad greeting)".into(),
        ));
    }
    let server_flags = r.read_u16().await?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdClientError::Protocol(
            "server does not speak fixed newstyle".into(),
        ));
    }
    let mut client_flags = CLIENT_FIXED_NEWSTYLE;
    if server_flags & FLAG_NO_ZEROES != 0 {
        client_flags |= CLIENT_NO_ZEROES;
    }
    let mut msg = BytesMut::new();
    msg.put_u32(client_flags);
    msg.put_u64(IHAVEOPT);
    msg.put_u32(OPT_GO);
    msg.put_u32(4 + export.len() as u32 + 2);
    msg.put_u32(export.len() as u32);
    msg.put_slice(export.as_bytes());
    msg.put_u16(0); // no information requests: the export info comes anyway
    w.write_all(&msg).await?;
    w.flush().await?;

    let mut info = None;
    loop {
        if r.read_u64().await? != OPT_REPLY_MAGIC {
            return Err(NbdClientError::Protocol("bad option reply magic".into()));
        }
        let opt = r.read_u32().await?;
        let kind = r.read_u32().await?;
        let len = r.read_u32().await?;
        if opt != OPT_GO {
            return Err(NbdClientError::Protocol(format!(
                "reply to option {opt}, not GO"
            )));
        }
        if len > MAX_OPT_REPLY {
            return Err(NbdClientError::Protocol(format!(
                "option reply of {len} bytes"
            )));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        match kind {
            REP_ACK => break,
            REP_INFO
                if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT =>
            {
                let mut s = [0u8; 8];
                s.copy_from_slice(&data[2..10]);
                info = Some((
                    u64::from_be_bytes(s),
                    u16::from_be_bytes([data[10], data[11]]),
                ));
            }
            k if k & 0x8000_0000 != 0 => {
                return Err(NbdClientError::Refused {
                    export: export.to_string(),
                    code: k,
                    message: String::from_utf8_lossy(&data).into_owned(),
                });
            }
            _ => {} // other informational replies: ignored, as the spec allows
        }
    }
    info.ok_or_else(|| NbdClientError::Protocol("GO acknowledged without export info".into()))
}

/// Dispatch simple replies to their waiting requests until the connection
/// ends; then fail everything still waiting.
async fn read_replies(mut r: OwnedReadHalf, pending: Pending) {
    let end = loop {
        let mut h = [0u8; 16];
        if let Err(e) = r.read_exact(&mut h).await {
            break format!("{e}");
        }
        let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        if magic != SIMPLE_REPLY_MAGIC {
            break format!("unexpected reply magic {magic:#x}");
        }
        let errno = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&h[8..16]);
        let cookie = u64::from_be_bytes(c);
        let Some(tx) = pending.lock().waiting.remove(&cookie) else {
            break format!("reply for unknown request {cookie}");
        };
        let _ = tx.send(errno);
    };
    tracing::debug!("NBD reply reader stopped: {end}");
    let mut p = pending.lock();
    p.dead = true;
    // Dropping the senders wakes every waiter with `Closed`.
    p.waiting.clear();
}

/// Payloads larger than [`MAX_WRITE`] must be split by the caller; this
/// helper does it for a contiguous buffer.
pub fn split_writes(offset: u64, data: &Bytes) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let n = (data.len() - at).min(MAX_WRITE);
        out.push((offset + at as u64, data.slice(at..at + n)));
        at += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_splits() {
        let h = request_header(CMD_WRITE, 9, 4096, 512);
        assert_eq!(&h[0..4], &REQUEST_MAGIC.to_be_bytes());
        assert_eq!(u16::from_be_bytes([h[6], h[7]]), CMD_WRITE);
        let data = Bytes::from(vec![1u8; MAX_WRITE + 10]);
        let parts = split_writes(100, &data);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].0, 100 + MAX_WRITE as u64);
        assert_eq!(parts[1].1.len(), 10);
    }
}
