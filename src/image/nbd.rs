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

/// A writable export held in memory, for tests and fuzzing of the server.
pub struct MemDisk {
    data: parking_lot::Mutex<Vec<u8>>,
}

impl MemDisk {
    pub fn new(size: usize) -> MemDisk {
        MemDisk {
            data: parking_lot::Mutex::new(vec![0u8; size]),
        }
    }
}

#[async_trait]
impl BlockSource for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().len() as u64
    }
    async fn read_at(&self, offset: u64, len: u32) -> std::io::Result<Bytes> {
        let d = self.data.lock();
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(len as usize)?))
            .filter(|r| r.end <= d.len())
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        Ok(Bytes::copy_from_slice(&d[range]))
    }
    fn writable(&self) -> bool {
        true
    }
    async fn write_at(&self, offset: u64, data: Bytes) -> std::io::Result<()> {
        let mut d = self.data.lock();
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(data.len())?))
            .filter(|r| r.end <= d.len())
            .ok_or(std::io::ErrorKind::InvalidInput)?;
        d[range].copy_from_slice(&data);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> std::io::Result<()> {
        self.write_at(offset, Bytes::from(vec![0u8; len as usize]))
            .await
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
    /// The client held its connection without progress past a limit.
    #[error("timed out: {0}")]
    Timeout(&'static str),
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

/// Serve one client connection to its end, with the default
/// [`NbdLimits`] timeouts.
pub async fn serve_conn<S>(stream: S, exports: Exports) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_conn_with(stream, exports, &NbdLimits::default()).await
}

/// Serve one client connection to its end: the negotiation must finish
/// within `limits.handshake_timeout`, and with `limits.idle_timeout` set a
/// connection with no request for that long (and none in flight) is closed.
pub async fn serve_conn_with<S>(
    stream: S,
    exports: Exports,
    limits: &NbdLimits,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let negotiated = tokio::time::timeout(
        limits.handshake_timeout,
        negotiate(&mut r, &mut w, &exports),
    )
    .await
    .map_err(|_| NbdError::Timeout("negotiation"))??;
    let Some(export) = negotiated else {
        return Ok(());
    };
    w.flush().await?;
    transmission(r, w, export, limits.idle_timeout).await
}

/// The handshake and option haggling; `None` when the client aborted.
async fn negotiate<R, W>(
    r: &mut R,
    w: &mut W,
    exports: &Exports,
) -> Result<Option<Arc<dyn BlockSource>>, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut w = w;
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
                return Ok(None);
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
    Ok(Some(export))
}

async fn transmission<R, W>(
    mut r: R,
    w: W,
    export: Arc<dyn BlockSource>,
    idle: Option<std::time::Duration>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let w = Arc::new(Mutex::new(w));
    let slots = Arc::new(Semaphore::new(PER_CONN_INFLIGHT));
    let size = export.size();
    let result = loop {
        let mut hdr = [0u8; 28];
        match read_header(&mut r, &mut hdr, idle, &slots).await {
            Ok(()) => {}
            Err(e) => break Err(e),
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

/// Read the next request header. With `idle` set, a client that sends
/// nothing for that long while none of its reads is in flight is gone (a
/// read still being served is progress, however slow upstream is).
async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    hdr: &mut [u8; 28],
    idle: Option<std::time::Duration>,
    slots: &Semaphore,
) -> Result<(), NbdError> {
    let mut read = std::pin::pin!(r.read_exact(hdr));
    let Some(idle) = idle else {
        read.await?;
        return Ok(());
    };
    // Bounded: each round waits `idle`, and a round only repeats while a
    // read of this connection is in flight.
    loop {
        match tokio::time::timeout(idle, read.as_mut()).await {
            Ok(res) => {
                res?;
                return Ok(());
            }
            Err(_) if slots.available_permits() < PER_CONN_INFLIGHT => continue,
            Err(_) => return Err(NbdError::Timeout("idle connection")),
        }
    }
}

/// Bounds on what NBD clients can hold open: a listener anyone can reach
/// must not be held by clients that connect and say nothing.
#[derive(Debug, Clone)]
pub struct NbdLimits {
    /// Connections served at once; past that, new ones are closed at once.
    pub max_connections: usize,
    /// From accept to the end of option negotiation.
    pub handshake_timeout: std::time::Duration,
    /// Close a connection that sends no request for this long. Off by
    /// default: qemu sends nothing while its guest does no disk I/O (for
    /// hours, on an idle VM), and it does not reconnect unless told to.
    pub idle_timeout: Option<std::time::Duration>,
}

impl Default for NbdLimits {
    fn default() -> Self {
        NbdLimits {
            max_connections: 256,
            handshake_timeout: std::time::Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

/// Admission to an NBD listener: the connection bound, the limits, and a
/// rate-limited log of failed connections (a scan or a flood must not fill
/// the log).
pub struct NbdGate {
    exports: Exports,
    limits: NbdLimits,
    permits: Arc<Semaphore>,
    failures: Arc<FailureLog>,
}

impl NbdGate {
    pub fn new(exports: Exports, limits: NbdLimits) -> Arc<NbdGate> {
        Arc::new(NbdGate {
            exports,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            failures: Arc::new(FailureLog::new()),
        })
    }

    /// Serve `stream` on a task of its own, or close it at once when
    /// `max_connections` are open.
    pub fn admit<S>(&self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.failures.note(format_args!(
                "NBD connection refused: {} connections open",
                self.limits.max_connections
            ));
            drop(stream);
            return;
        };
        let (exports, limits, failures) = (
            self.exports.clone(),
            self.limits.clone(),
            self.failures.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = serve_conn_with(stream, exports, &limits).await {
                // A misbehaving client loses only its own connection.
                failures.note(format_args!("NBD connection closed: {e}"));
            }
        });
    }

    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections.max(1) - self.permits.available_permits()
    }

    /// Failed or refused connections so far (logged or not).
    pub fn failures(&self) -> u64 {
        self.failures.total()
    }
}

/// At most `PER_WINDOW` lines per `WINDOW`; the rest are counted and
/// reported in one line when the next window opens.
struct FailureLog {
    state: parking_lot::Mutex<LogWindow>,
}

struct LogWindow {
    start: std::time::Instant,
    logged: u32,
    suppressed: u64,
    total: u64,
}

impl FailureLog {
    const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
    const PER_WINDOW: u32 = 5;

    fn new() -> FailureLog {
        FailureLog {
            state: parking_lot::Mutex::new(LogWindow {
                start: std::time::Instant::now(),
                logged: 0,
                suppressed: 0,
                total: 0,
            }),
        }
    }

    fn note(&self, what: std::fmt::Arguments<'_>) {
        let mut st = self.state.lock();
        st.total += 1;
        if st.start.elapsed() >= Self::WINDOW {
            if st.suppressed > 0 {
                tracing::info!(
                    "{} more failed NBD connections in the last {:?} were not logged",
                    st.suppressed,
                    st.start.elapsed()
                );
            }
            st.start = std::time::Instant::now();
            st.logged = 0;
            st.suppressed = 0;
        }
        if st.logged < Self::PER_WINDOW {
            st.logged += 1;
            tracing::info!("{what}");
        } else {
            st.suppressed += 1;
        }
    }

    fn total(&self) -> u64 {
        self.state.lock().total
    }
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

    struct Mem(Vec<u8>);

    #[async_trait]
    impl BlockSource for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        async fn read_at(&self, offset: u64, len: u32) -> std::io::Result<Bytes> {
            let o = offset as usize;
            Ok(Bytes::copy_from_slice(&self.0[o..o + len as usize]))
        }
    }

    async fn listen(
        limits: NbdLimits,
    ) -> (
        std::net::SocketAddr,
        Arc<NbdGate>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut exports = Exports::default();
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        exports.add("img", Arc::new(Mem(data)));
        let gate = NbdGate::new(exports, limits);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let g = gate.clone();
        let task = tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                g.admit(s);
            }
        });
        (addr, gate, task)
    }

    /// Negotiate export "img" and read 4096 bytes at 8192; returns the
    /// connection for more.
    async fn legit_read(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello[..8], &NBDMAGIC.to_be_bytes());
        s.write_all(&(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES).to_be_bytes())
            .await
            .unwrap();
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        opt.extend_from_slice(&3u32.to_be_bytes());
        opt.extend_from_slice(b"img");
        s.write_all(&opt).await.unwrap();
        let mut info = [0u8; 10];
        s.read_exact(&mut info).await.unwrap();
        assert_eq!(u64::from_be_bytes(info[..8].try_into().unwrap()), 65536);
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
        req[8..16].copy_from_slice(&42u64.to_be_bytes());
        req[16..24].copy_from_slice(&8192u64.to_be_bytes());
        req[24..28].copy_from_slice(&4096u32.to_be_bytes());
        s.write_all(&req).await.unwrap();
        let mut rep = [0u8; 16];
        s.read_exact(&mut rep).await.unwrap();
        assert_eq!(&rep[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&rep[4..8], &[0, 0, 0, 0], "error in the reply");
        assert_eq!(u64::from_be_bytes(rep[8..].try_into().unwrap()), 42);
        let mut data = vec![0u8; 4096];
        s.read_exact(&mut data).await.unwrap();
        let want: Vec<u8> = (8192..8192 + 4096u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(data, want);
        s
    }

    /// Whether the server closes `s` within `limit` (EOF after whatever it
    /// sent).
    async fn closed_within(s: &mut tokio::net::TcpStream, limit: std::time::Duration) -> bool {
        let mut buf = [0u8; 64];
        let deadline = tokio::time::Instant::now() + limit;
        for _ in 0..100 {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_connections_are_closed_and_a_real_client_still_works() {
        let limits = NbdLimits {
            max_connections: 512,
            handshake_timeout: std::time::Duration::from_millis(800),
            idle_timeout: None,
        };
        let (addr, gate, task) = listen(limits).await;
        let t0 = std::time::Instant::now();
        let mut silent = Vec::new();
        for _ in 0..200 {
            silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        for _ in 0..200 {
            if gate.open_connections() >= 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(gate.open_connections() >= 200);
        // While they hold their connections, a real client is served.
        let legit = legit_read(addr).await;
        assert!(
            t0.elapsed() < std::time::Duration::from_millis(800),
            "test too slow to tell"
        );
        for s in &mut silent {
            assert!(closed_within(s, std::time::Duration::from_secs(3)).await);
        }
        let took = t0.elapsed();
        assert!(
            took < std::time::Duration::from_secs(3),
            "closed after {took:?}"
        );
        // The negotiated client is past the handshake limit and still open.
        assert_eq!(gate.open_connections(), 1);
        assert_eq!(gate.failures(), 200);
        drop(legit);
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn excess_connections_are_refused_and_idle_ones_closed() {
        let limits = NbdLimits {
            max_connections: 2,
            handshake_timeout: std::time::Duration::from_secs(30),
            idle_timeout: Some(std::time::Duration::from_millis(300)),
        };
        let (addr, gate, task) = listen(limits).await;
        let mut a = legit_read(addr).await;
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..200 {
            if gate.open_connections() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(gate.open_connections(), 2);
        // The third gets no hello, only a close.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 18];
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "an excess connection must be closed without a hello");
        // The negotiated client that then stays silent is closed as idle.
        assert!(closed_within(&mut a, std::time::Duration::from_secs(3)).await);
        assert!(gate.failures() >= 2);
        // Its slot is free again: a new client is served.
        for _ in 0..200 {
            if gate.open_connections() < 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let _d = legit_read(addr).await;
        task.abort();
    }
}
