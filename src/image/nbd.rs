//! NBD server (newstyle, fixed handshake; see the NBD protocol document,
//! doc/proto.md in the nbd project) exporting pseudo images read-only, and
//! writable exports (the disk-migration sender, which QEMU's mirror job
//! writes into).
//!
//! Parsing comes first: the handshake and request headers are decoded into
//! [`Opt`] and [`Request`] values, then acted on. A client that breaks the
//! protocol loses its own connection; other connections never notice.
//! Simple replies only (no structured replies), which every qemu accepts.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, Semaphore};

use super::pseudo::PseudoImage;

pub(super) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(super) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(super) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(super) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(super) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub(super) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(super) const FLAG_NO_ZEROES: u16 = 2;
pub(super) const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub(super) const CLIENT_NO_ZEROES: u32 = 2;

pub(super) const OPT_EXPORT_NAME: u32 = 1;
pub(super) const OPT_ABORT: u32 = 2;
pub(super) const OPT_LIST: u32 = 3;
pub(super) const OPT_INFO: u32 = 6;
pub(super) const OPT_GO: u32 = 7;

pub(super) const REP_ACK: u32 = 1;
pub(super) const REP_SERVER: u32 = 2;
pub(super) const REP_INFO: u32 = 3;
pub(super) const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub(super) const REP_ERR_INVALID: u32 = 0x8000_0003;
pub(super) const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

pub(super) const INFO_EXPORT: u16 = 0;
pub(super) const INFO_BLOCK_SIZE: u16 = 3;

pub(super) const TFLAG_HAS_FLAGS: u16 = 1;
pub(super) const TFLAG_READ_ONLY: u16 = 2;
pub(super) const TFLAG_SEND_FLUSH: u16 = 4;
pub(super) const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub(super) const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub(super) const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub(super) const CMD_READ: u16 = 0;
pub(super) const CMD_WRITE: u16 = 1;
pub(super) const CMD_DISC: u16 = 2;
pub(super) const CMD_FLUSH: u16 = 3;
pub(super) const CMD_TRIM: u16 = 4;
pub(super) const CMD_WRITE_ZEROES: u16 = 6;

const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// Largest option payload and read we accept (qemu asks for at most 32 MiB).
const MAX_OPTION_LEN: u32 = 64 * 1024;
const MAX_READ: u32 = 32 << 20;
/// Requests of one connection served at once.
const PER_CONN_INFLIGHT: usize = 16;

/// Something exportable: a fixed-size block device, read-only unless it
/// says it is [`writable`](BlockSource::writable).
///
/// Writes, zeroes and trims of one connection are handed over one at a
/// time in the order the client sent them, and `flush` only after every
/// earlier one returned, so an implementation may queue them and make
/// `flush` wait for the queue.
#[async_trait]
pub trait BlockSource: Send + Sync + 'static {
    fn size(&self) -> u64;
    async fn read_at(&self, offset: u64, len: u32) -> std::io::Result<Bytes>;
    /// Accepts WRITE, WRITE_ZEROES, TRIM and FLUSH.
    fn writable(&self) -> bool {
        false
    }
    async fn write_at(&self, _offset: u64, _data: Bytes) -> std::io::Result<()> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }
    async fn write_zeroes(&self, _offset: u64, _len: u32) -> std::io::Result<()> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }
    /// Advisory: the client no longer needs these bytes.
    async fn trim(&self, _offset: u64, _len: u32) -> std::io::Result<()> {
        Ok(())
    }
    /// Everything acknowledged so far is durable when this returns.
    async fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Images are exported padded with zeros to a multiple of 512 bytes:
/// qemu sizes devices in sectors, and without structured replies its NBD
/// client expects a whole sector even for a read it clipped at the end.
const SECTOR: u64 = 512;

#[async_trait]
impl BlockSource for PseudoImage {
    fn size(&self) -> u64 {
        PseudoImage::size(self).div_ceil(SECTOR) * SECTOR
    }
    async fn read_at(&self, offset: u64, len: u32) -> std::io::Result<Bytes> {
        let real = PseudoImage::size(self);
        let end = offset + len as u64;
        if end <= real {
            return self.read(offset, len).await.map_err(std::io::Error::other);
        }
        let mut out = bytes::BytesMut::with_capacity(len as usize);
        if offset < real {
            let head = self
                .read(offset, (real - offset) as u32)
                .await
                .map_err(std::io::Error::other)?;
            out.extend_from_slice(&head);
        }
        out.resize(len as usize, 0);
        Ok(out.freeze())
    }
}

/// The exports of one server, by name. The empty name asks for the
/// default export (the first one).
#[derive(Clone, Default)]
pub struct Exports {
    map: BTreeMap<String, Arc<dyn BlockSource>>,
}

impl Exports {
    pub fn add(&mut self, name: &str, src: Arc<dyn BlockSource>) {
        self.map.insert(name.to_string(), src);
    }
    fn get(&self, name: &str) -> Option<Arc<dyn BlockSource>> {
        if name.is_empty() {
            return self.map.values().next().cloned();
        }
        self.map.get(name).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A parsed handshake option.
#[derive(Debug, PartialEq, Eq)]
enum Opt {
    ExportName(String),
    Abort,
    List,
    Info {
        go: bool,
        name: String,
        requests: Vec<u16>,
    },
    Other(u32),
}

fn parse_opt(code: u32, data: &[u8]) -> Result<Opt, String> {
    let name_of = |b: &[u8]| {
        String::from_utf8(b.to_vec()).map_err(|_| "export name is not UTF-8".to_string())
    };
    Ok(match code {
        OPT_EXPORT_NAME => Opt::ExportName(name_of(data)?),
        OPT_ABORT => Opt::Abort,
        OPT_LIST => Opt::List,
        OPT_INFO | OPT_GO => {
            if data.len() < 6 {
                return Err("INFO/GO payload too short".into());
            }
            let nlen = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if data.len() < 4 + nlen + 2 {
                return Err("INFO/GO name overruns the payload".into());
            }
            let name = name_of(&data[4..4 + nlen])?;
            let at = 4 + nlen;
            let n = u16::from_be_bytes([data[at], data[at + 1]]) as usize;
            if data.len() != at + 2 + 2 * n {
                return Err("INFO/GO request list has the wrong length".into());
            }
            let requests = (0..n)
                .map(|i| u16::from_be_bytes([data[at + 2 + 2 * i], data[at + 3 + 2 * i]]))
                .collect();
            Opt::Info {
                go: code == OPT_GO,
                name,
                requests,
            }
        }
        other => Opt::Other(other),
    })
}

/// A parsed transmission request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
}

fn parse_request(b: &[u8; 28]) -> Result<Request, String> {
    let magic = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if magic != REQUEST_MAGIC {
        return Err(format!("bad request magic {magic:#x}"));
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&b[8..16]);
    let mut o = [0u8; 8];
    o.copy_from_slice(&b[16..24]);
    Ok(Request {
        flags: u16::from_be_bytes([b[4], b[5]]),
        kind: u16::from_be_bytes([b[6], b[7]]),
        cookie: u64::from_be_bytes(c),
        offset: u64::from_be_bytes(o),
        len: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
    })
}

async fn opt_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    w.write_all(&b).await
}

fn transmission_flags(export: &dyn BlockSource) -> u16 {
    if export.writable() {
        // No multi-conn: a flush covers this connection's writes only.
        TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
    } else {
        TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN
    }
}

/// Whether `offset + len` stays inside an export of `size` bytes.
fn in_range(offset: u64, len: u32, size: u64) -> bool {
    offset.checked_add(len as u64).is_some_and(|e| e <= size)
}

fn errno_of(e: &std::io::Error) -> u32 {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => EPERM,
        std::io::ErrorKind::InvalidInput => EINVAL,
        _ => EIO,
    }
}

/// Serve one client connection to its end.
pub async fn serve_conn<S>(stream: S, exports: Exports) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello).await?;
    let client_flags = r.read_u32().await?;
    if client_flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & CLIENT_NO_ZEROES != 0;

    let export = loop {
        if r.read_u64().await? != IHAVEOPT {
            return Err(NbdError::Protocol("option without IHAVEOPT".into()));
        }
        let code = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION_LEN {
            return Err(NbdError::Protocol(format!("option of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        let opt = match parse_opt(code, &data) {
            Ok(o) => o,
            Err(why) => {
                opt_reply(&mut w, code, REP_ERR_INVALID, why.as_bytes()).await?;
                continue;
            }
        };
        match opt {
            Opt::Abort => {
                let _ = opt_reply(&mut w, code, REP_ACK, &[]).await;
                return Ok(());
            }
            Opt::List => {
                for name in exports.map.keys() {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    opt_reply(&mut w, code, REP_SERVER, &d).await?;
                }
                opt_reply(&mut w, code, REP_ACK, &[]).await?;
            }
            Opt::ExportName(name) => {
                // No way to refuse politely here: the protocol says close.
                let Some(src) = exports.get(&name) else {
                    return Err(NbdError::Protocol(format!("unknown export {name:?}")));
                };
                let mut b = Vec::with_capacity(10 + 124);
                b.extend_from_slice(&src.size().to_be_bytes());
                b.extend_from_slice(&transmission_flags(&*src).to_be_bytes());
                if !no_zeroes {
                    b.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&b).await?;
                break src;
            }
            Opt::Info { go, name, requests } => {
                let Some(src) = exports.get(&name) else {
                    opt_reply(&mut w, code, REP_ERR_UNKNOWN, b"no such export").await?;
                    continue;
                };
                let mut info = Vec::with_capacity(12);
                info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                info.extend_from_slice(&src.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags(&*src).to_be_bytes());
                opt_reply(&mut w, code, REP_INFO, &info).await?;
                if requests.contains(&INFO_BLOCK_SIZE) {
                    let mut bs = Vec::with_capacity(14);
                    bs.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    bs.extend_from_slice(&1u32.to_be_bytes());
                    bs.extend_from_slice(&4096u32.to_be_bytes());
                    bs.extend_from_slice(&MAX_READ.to_be_bytes());
                    opt_reply(&mut w, code, REP_INFO, &bs).await?;
                }
                opt_reply(&mut w, code, REP_ACK, &[]).await?;
                if go {
                    break src;
                }
            }
            Opt::Other(c) => {
                opt_reply(&mut w, c, REP_ERR_UNSUP, &[]).await?;
            }
        }
    };
    w.flush().await?;
    transmission(r, w, export).await
}

async fn transmission<R, W>(mut r: R, w: W, export: Arc<dyn BlockSource>) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let w = Arc::new(Mutex::new(w));
    let slots = Arc::new(Semaphore::new(PER_CONN_INFLIGHT));
    let size = export.size();
    let result = loop {
        let mut hdr = [0u8; 28];
        if let Err(e) = r.read_exact(&mut hdr).await {
            break Err(e.into());
        }
        let req = match parse_request(&hdr) {
            Ok(q) => q,
            Err(why) => break Err(NbdError::Protocol(why)),
        };
        tracing::trace!(?req, "NBD request");
        match req.kind {
            CMD_DISC => break Ok(()),
            CMD_READ => {
                if req.len > MAX_READ
                    || req
                        .offset
                        .checked_add(req.len as u64)
                        .is_none_or(|e| e > size)
                {
                    reply(&w, req.cookie, EINVAL, None).await?;
                    continue;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break Ok(());
                };
                let (w, export) = (w.clone(), export.clone());
                tokio::spawn(async move {
                    let res = export.read_at(req.offset, req.len).await;
                    tracing::trace!(cookie = req.cookie, ok = res.is_ok(), "NBD read done");
                    let sent = match res {
                        Ok(data) => reply(&w, req.cookie, 0, Some(&data)).await,
                        Err(e) => {
                            tracing::warn!(
                                offset = req.offset,
                                len = req.len,
                                "NBD read failed: {e}"
                            );
                            reply(&w, req.cookie, EIO, None).await
                        }
                    };
                    if let Err(e) = sent {
                        tracing::debug!("NBD reply not sent: {e}");
                    }
                    drop(permit);
                });
            }
            CMD_FLUSH => {
                // Answer after the reads in flight, as a flush orders
                // against earlier requests; writes were handed over inline.
                let Ok(all) = slots.acquire_many(PER_CONN_INFLIGHT as u32).await else {
                    break Ok(());
                };
                drop(all);
                let err = match export.flush().await {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::warn!("NBD flush failed: {e}");
                        errno_of(&e)
                    }
                };
                reply(&w, req.cookie, err, None).await?;
            }
            CMD_WRITE => {
                // The payload follows the header; read it even when the
                // write is refused, to stay in sync.
                if req.len > MAX_READ {
                    break Err(NbdError::Protocol(format!("write of {} bytes", req.len)));
                }
                let mut data = vec![0u8; req.len as usize];
                if let Err(e) = r.read_exact(&mut data).await {
                    break Err(e.into());
                }
                let err = if !export.writable() {
                    EPERM
                } else if !in_range(req.offset, req.len, size) {
                    ENOSPC
                } else {
                    // Inline, not spawned: writes reach the export in the
                    // client's order (see BlockSource).
                    match export.write_at(req.offset, Bytes::from(data)).await {
                        Ok(()) => 0,
                        Err(e) => {
                            tracing::warn!(
                                offset = req.offset,
                                len = req.len,
                                "NBD write failed: {e}"
                            );
                            errno_of(&e)
                        }
                    }
                };
                reply(&w, req.cookie, err, None).await?;
            }
            CMD_WRITE_ZEROES | CMD_TRIM => {
                let err = if !export.writable() {
                    EPERM
                } else if !in_range(req.offset, req.len, size) {
                    ENOSPC
                } else {
                    let res = if req.kind == CMD_TRIM {
                        export.trim(req.offset, req.len).await
                    } else {
                        export.write_zeroes(req.offset, req.len).await
                    };
                    match res {
                        Ok(()) => 0,
                        Err(e) => {
                            tracing::warn!(
                                offset = req.offset,
                                len = req.len,
                                "NBD zero/trim failed: {e}"
                            );
                            errno_of(&e)
                        }
                    }
                };
                reply(&w, req.cookie, err, None).await?;
            }
            _ => {
                let _ = req.flags;
                reply(&w, req.cookie, EINVAL, None).await?;
            }
        }
    };
    // Let reads in flight answer before the socket closes.
    let _ = slots.acquire_many(PER_CONN_INFLIGHT as u32).await;
    let mut w = w.lock().await;
    let _ = w.shutdown().await;
    result
}

async fn reply<W: AsyncWrite + Unpin>(
    w: &Mutex<W>,
    cookie: u64,
    error: u32,
    data: Option<&[u8]>,
) -> std::io::Result<()> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    // Header and data under one lock: replies of concurrent reads must not interleave.
    let mut w = w.lock().await;
    w.write_all(&h).await?;
    if let Some(d) = data {
        w.write_all(d).await?;
    }
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options() {
        let mut d = Vec::new();
        d.extend_from_slice(&3u32.to_be_bytes());
        d.extend_from_slice(b"img");
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&3u16.to_be_bytes());
        assert_eq!(
            parse_opt(OPT_GO, &d).unwrap(),
            Opt::Info {
                go: true,
                name: "img".into(),
                requests: vec![3]
            }
        );
        assert!(parse_opt(OPT_GO, &d[..5]).is_err());
        assert!(parse_opt(OPT_INFO, &d[..d.len() - 1]).is_err());
        assert_eq!(parse_opt(99, &[]).unwrap(), Opt::Other(99));
    }

    #[test]
    fn parses_requests() {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(
            (r.kind, r.cookie, r.offset, r.len),
            (CMD_READ, 7, 4096, 512)
        );
        b[0] = 0;
        assert!(parse_request(&b).is_err());
    }
}
