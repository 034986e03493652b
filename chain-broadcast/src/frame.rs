//! Wire frames of the chain protocol, and a small pure parser.
//!
//! Every frame is `magic "SC" | kind u8 | len u32 BE | payload (len bytes)`, all
//! integers big-endian. The connection opens with HELLO (upstream →
//! downstream), answered by HAVE or ERROR; then DATA* and END flow down;
//! REPORT (or ERROR) comes back up. KEEPALIVE flows down while a hop has
//! nothing to send, and up while a node prepares its HAVE or finishes after
//! END, so read timeouts catch only dead peers. ERROR may come up at any
//! time; the sender of an ERROR closes the connection. HELLO carries the
//! protocol version; a node refuses any version it does not speak.
//!
//! | kind | frame     | payload |
//! |------|-----------|---------|
//! | 1    | HELLO     | version u16, transfer_id u64, name (u16 len + UTF-8), connect/io/finish timeouts (u32 ms each), chain (u16 count + addrs; first = the receiving node), manifest (u32 count + (id (32 bytes), len u32)*) |
//! | 2    | HAVE      | count u32 (= manifest entries), bitmap ceil(count/8) bytes, bit i (LSB-first) set = entry i is held by this node and by every node downstream of it |
//! | 3    | DATA      | id (32 bytes), chunk bytes (rest of the payload) |
//! | 4    | END       | empty |
//! | 5    | KEEPALIVE | empty |
//! | 6    | REPORT    | u16 count + node reports: addr, ok u8, reason (u16 len + UTF-8), bytes_received u64, bytes_written u64, elapsed µs u64 |
//! | 7    | ERROR     | reason (u16 len + UTF-8) |
//! | 8    | TAG       | tag (32 bytes): keyed BLAKE3 of the control frame just before it (see [`crate::auth`]) |
//!
//! A signed session's HELLO ends with `1 u8, ticket (u32 len + bytes),
//! control secret (32 bytes)`; an unsigned one ends after the manifest. In a
//! signed session every HAVE and REPORT is followed by a TAG.
//!
//! An address is `4 | ipv4 (4 bytes) | port u16` or `6 | ipv6 (16 bytes) | port u16`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::manifest::{ChunkId, ChunkRef, Manifest};
use crate::report::NodeReport;

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 1;
/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"SC";
/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 7;
/// Default upper bound on a frame's payload (a manifest of ~1.8 M chunks).
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;
/// Longest object name accepted.
pub const MAX_NAME: usize = 4096;
/// Longest chain accepted in a HELLO.
pub const MAX_CHAIN: usize = 4096;

const KIND_HELLO: u8 = 1;
const KIND_HAVE: u8 = 2;
const KIND_DATA: u8 = 3;
const KIND_END: u8 = 4;
const KIND_KEEPALIVE: u8 = 5;
const KIND_REPORT: u8 = 6;
const KIND_ERROR: u8 = 7;
const KIND_TAG: u8 = 8;

/// Longest session ticket accepted in a HELLO.
pub const MAX_TICKET: usize = 512 << 10;

/// Why bytes could not be parsed into a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The first two bytes were not `SC`.
    #[error("bad frame magic {0:02x?} (not a chain-broadcast peer?)")]
    BadMagic([u8; 2]),
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Declared payload larger than the limit.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    Oversize {
        /// Declared payload length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    BadVersion(u16),
    /// The payload ended before a field did.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// Bytes left after the last field.
    #[error("{0} trailing bytes in {1} frame")]
    Trailing(usize, &'static str),
    /// A field had an impossible value.
    #[error("invalid {0} frame: {1}")]
    Invalid(&'static str, String),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    UnexpectedEof,
}

/// The opening frame of a hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender of this frame.
    pub version: u16,
    /// Same on every hop of one propagation.
    pub transfer_id: u64,
    /// Object name.
    pub name: String,
    /// Timeouts the whole chain uses.
    pub connect_timeout: Duration,
    /// Idle/read/write timeout.
    pub io_timeout: Duration,
    /// How long a node waits for its downstream's REPORT after END.
    pub finish_timeout: Duration,
    /// The receiving node first, then every node after it, in order.
    pub chain: Vec<SocketAddr>,
    /// The object.
    pub manifest: Arc<Manifest>,
    /// The repository's ticket and the session's control secret; `None`
    /// for an unsigned session.
    pub session: Option<HelloSession>,
}

/// What a signed session adds to HELLO.
#[derive(Clone, PartialEq, Eq)]
pub struct HelloSession {
    /// The signed ticket's bytes (checked by [`crate::auth`], not here).
    pub ticket: Bytes,
    /// The secret the control key derives from; the ticket commits to it.
    pub secret: [u8; 32],
}

impl std::fmt::Debug for HelloSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(
            f,
            "HelloSession {{ ticket: {} bytes, .. }}",
            self.ticket.len()
        )
    }
}

/// A parsed frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Opening frame.
    Hello(Hello),
    /// Which manifest entries this node and everything downstream hold.
    Have(Vec<bool>),
    /// One chunk.
    Data {
        /// Claimed id; checked against the bytes by the receiver.
        id: ChunkId,
        /// Chunk bytes.
        data: Bytes,
    },
    /// No more DATA.
    End,
    /// Sent when a hop has nothing to send for a while, so read timeouts
    /// catch only dead peers.
    Keepalive,
    /// Results of this node and every node after it.
    Report(Vec<NodeReport>),
    /// The peer gives up on this connection, with the reason.
    Error(String),
    /// Authenticates the HAVE or REPORT just before it (signed sessions).
    Tag([u8; 32]),
}

impl Frame {
    /// Short name for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "HELLO",
            Frame::Have(_) => "HAVE",
            Frame::Data { .. } => "DATA",
            Frame::End => "END",
            Frame::Keepalive => "KEEPALIVE",
            Frame::Report(_) => "REPORT",
            Frame::Error(_) => "ERROR",
            Frame::Tag(_) => "TAG",
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_HELLO => "HELLO",
        KIND_HAVE => "HAVE",
        KIND_DATA => "DATA",
        KIND_END => "END",
        KIND_KEEPALIVE => "KEEPALIVE",
        KIND_REPORT => "REPORT",
        KIND_ERROR => "ERROR",
        KIND_TAG => "TAG",
        _ => "unknown",
    }
}

/// Checks a frame header and returns `(kind, payload length)`.
pub fn parse_header(h: &[u8; HEADER_LEN], max_frame: u32) -> Result<(u8, u32), FrameError> {
    if h[0..2] != MAGIC {
        return Err(FrameError::BadMagic([h[0], h[1]]));
    }
    let kind = h[2];
    if !(KIND_HELLO..=KIND_TAG).contains(&kind) {
        return Err(FrameError::UnknownKind(kind));
    }
    let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]);
    if len > max_frame {
        return Err(FrameError::Oversize {
            len,
            max: max_frame,
        });
    }
    Ok((kind, len))
}

/// Takes one complete frame off the front of `buf`, if there is one.
/// `Ok(None)` means more bytes are needed; an error means the stream is not
/// a valid frame stream and must be dropped. Pure, so it can be fuzzed.
pub fn decode_frame(buf: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        // A wrong magic is reported as soon as it is visible.
        if buf.len() >= 2 && buf[0..2] != MAGIC {
            return Err(FrameError::BadMagic([buf[0], buf[1]]));
        }
        return Ok(None);
    }
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&buf[..HEADER_LEN]);
    let (kind, len) = parse_header(&h, max_frame)?;
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(len as usize).freeze();
    decode_payload(kind, payload).map(Some)
}

/// Cursor over a payload that turns running out of bytes into `Truncated`.
struct Rd {
    b: Bytes,
    what: &'static str,
}

impl Rd {
    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.b.len() < n {
            Err(FrameError::Truncated(self.what))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.b.get_u8())
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        self.need(2)?;
        Ok(self.b.get_u16())
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.b.get_u32())
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.b.get_u64())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, FrameError> {
        self.need(n)?;
        Ok(self.b.split_to(n))
    }
    fn id(&mut self) -> Result<ChunkId, FrameError> {
        self.need(32)?;
        let mut id = [0u8; 32];
        self.b.copy_to_slice(&mut id);
        Ok(ChunkId(id))
    }
    fn string(&mut self, max: usize) -> Result<String, FrameError> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(FrameError::Invalid(
                self.what,
                format!("string of {n} bytes, limit {max}"),
            ));
        }
        let raw = self.bytes(n)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| FrameError::Invalid(self.what, "string is not UTF-8".into()))
    }
    fn addr(&mut self) -> Result<SocketAddr, FrameError> {
        let ip = match self.u8()? {
            4 => {
                self.need(4)?;
                let mut o = [0u8; 4];
                self.b.copy_to_slice(&mut o);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                self.need(16)?;
                let mut o = [0u8; 16];
                self.b.copy_to_slice(&mut o);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            t => {
                return Err(FrameError::Invalid(
                    self.what,
                    format!("address family tag {t}"),
                ))
            }
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn duration_ms(&mut self) -> Result<Duration, FrameError> {
        Ok(Duration::from_millis(u64::from(self.u32()?)))
    }
    fn done(self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing(self.b.len(), self.what))
        }
    }
}

/// Parses the payload of a frame of the given kind.
pub fn decode_payload(kind: u8, payload: Bytes) -> Result<Frame, FrameError> {
    let mut r = Rd {
        b: payload,
        what: kind_name(kind),
    };
    let frame = match kind {
        KIND_HELLO => {
            let version = r.u16()?;
            if version != PROTOCOL_VERSION {
                return Err(FrameError::BadVersion(version));
            }
            let transfer_id = r.u64()?;
            let name = r.string(MAX_NAME)?;
            let connect_timeout = r.duration_ms()?;
            let io_timeout = r.duration_ms()?;
            let finish_timeout = r.duration_ms()?;
            let n = r.u16()? as usize;
            if n == 0 || n > MAX_CHAIN {
                return Err(FrameError::Invalid("HELLO", format!("chain of {n} nodes")));
            }
            let mut chain = Vec::with_capacity(n);
            for _ in 0..n {
                chain.push(r.addr()?);
            }
            let count = r.u32()? as usize;
            // Bound the allocation by what the payload can actually hold.
            if count > r.b.len() / 36 {
                return Err(FrameError::Truncated("HELLO"));
            }
            let mut chunks = Vec::with_capacity(count);
            for _ in 0..count {
                let id = r.id()?;
                let len = r.u32()?;
                chunks.push(ChunkRef { id, len });
            }
            let session = if r.b.is_empty() {
                None
            } else {
                if r.u8()? != 1 {
                    return Err(FrameError::Invalid("HELLO", "bad session marker".into()));
                }
                let n = r.u32()? as usize;
                if n > MAX_TICKET {
                    return Err(FrameError::Invalid(
                        "HELLO",
                        format!("ticket of {n} bytes, limit {MAX_TICKET}"),
                    ));
                }
                let ticket = r.bytes(n)?;
                r.need(32)?;
                let mut secret = [0u8; 32];
                r.b.copy_to_slice(&mut secret);
                Some(HelloSession { ticket, secret })
            };
            Frame::Hello(Hello {
                version,
                transfer_id,
                name,
                connect_timeout,
                io_timeout,
                finish_timeout,
                chain,
                manifest: Arc::new(Manifest { chunks }),
                session,
            })
        }
        KIND_HAVE => {
            let count = r.u32()? as usize;
            let bitmap = r.bytes(count.div_ceil(8))?;
            let have = (0..count)
                .map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            Frame::Have(have)
        }
        KIND_DATA => {
            let id = r.id()?;
            let data = std::mem::take(&mut r.b);
            Frame::Data { id, data }
        }
        KIND_END => Frame::End,
        KIND_KEEPALIVE => Frame::Keepalive,
        KIND_REPORT => {
            let n = r.u16()? as usize;
            let mut reports = Vec::with_capacity(n.min(MAX_CHAIN));
            for _ in 0..n {
                let addr = r.addr()?;
                let ok = match r.u8()? {
                    0 => false,
                    1 => true,
                    v => return Err(FrameError::Invalid("REPORT", format!("ok flag {v}"))),
                };
                let reason = r.string(u16::MAX as usize)?;
                let bytes_received = r.u64()?;
                let bytes_written = r.u64()?;
                let elapsed = Duration::from_micros(r.u64()?);
                reports.push(NodeReport {
                    addr,
                    ok,
                    reason: if reason.is_empty() {
                        None
                    } else {
                        Some(reason)
                    },
                    bytes_received,
                    bytes_written,
                    elapsed,
                });
            }
            Frame::Report(reports)
        }
        KIND_ERROR => Frame::Error(r.string(u16::MAX as usize)?),
        KIND_TAG => {
            r.need(32)?;
            let mut tag = [0u8; 32];
            r.b.copy_to_slice(&mut tag);
            Frame::Tag(tag)
        }
        k => return Err(FrameError::UnknownKind(k)),
    };
    r.done()?;
    Ok(frame)
}

fn put_string(b: &mut BytesMut, s: &str) {
    // Longer strings are cut at a char boundary rather than refused: they
    // are only names and reasons, and names are checked when sent.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.put_u16(end as u16);
    b.put_slice(&s.as_bytes()[..end]);
}

fn put_addr(b: &mut BytesMut, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            b.put_u8(4);
            b.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            b.put_u8(6);
            b.put_slice(&ip.octets());
        }
    }
    b.put_u16(a.port());
}

fn put_ms(b: &mut BytesMut, d: Duration) {
    b.put_u32(u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
}

fn header(b: &mut BytesMut, kind: u8, len: usize) {
    b.put_slice(&MAGIC);
    b.put_u8(kind);
    b.put_u32(len as u32);
}

/// Serialises everything but DATA into one buffer (header included).
/// DATA is written as [`data_header`] followed by the chunk bytes, so the
/// bytes are never copied.
pub fn encode(frame: &Frame) -> Bytes {
    let mut p = BytesMut::new();
    let kind = match frame {
        Frame::Hello(h) => {
            p.reserve(64 + h.chain.len() * 19 + h.manifest.len() * 36);
            p.put_u16(h.version);
            p.put_u64(h.transfer_id);
            put_string(&mut p, &h.name);
            put_ms(&mut p, h.connect_timeout);
            put_ms(&mut p, h.io_timeout);
            put_ms(&mut p, h.finish_timeout);
            p.put_u16(h.chain.len() as u16);
            for a in &h.chain {
                put_addr(&mut p, a);
            }
            p.put_u32(h.manifest.len() as u32);
            for c in &h.manifest.chunks {
                p.put_slice(&c.id.0);
                p.put_u32(c.len);
            }
            if let Some(sess) = &h.session {
                p.reserve(37 + sess.ticket.len());
                p.put_u8(1);
                p.put_u32(sess.ticket.len() as u32);
                p.put_slice(&sess.ticket);
                p.put_slice(&sess.secret);
            }
            KIND_HELLO
        }
        Frame::Have(have) => {
            p.put_u32(have.len() as u32);
            let mut bitmap = vec![0u8; have.len().div_ceil(8)];
            for (i, h) in have.iter().enumerate() {
                if *h {
                    bitmap[i / 8] |= 1 << (i % 8);
                }
            }
            p.put_slice(&bitmap);
            KIND_HAVE
        }
        Frame::Data { id, data } => {
            p.put_slice(&id.0);
            p.put_slice(data);
            KIND_DATA
        }
        Frame::End => KIND_END,
        Frame::Keepalive => KIND_KEEPALIVE,
        Frame::Report(reports) => {
            // A chain is at most MAX_CHAIN long; never write a count that
            // disagrees with the entries that follow.
            let n = reports.len().min(u16::MAX as usize);
            p.put_u16(n as u16);
            for r in &reports[..n] {
                put_addr(&mut p, &r.addr);
                p.put_u8(u8::from(r.ok));
                put_string(&mut p, r.reason.as_deref().unwrap_or(""));
                p.put_u64(r.bytes_received);
                p.put_u64(r.bytes_written);
                p.put_u64(u64::try_from(r.elapsed.as_micros()).unwrap_or(u64::MAX));
            }
            KIND_REPORT
        }
        Frame::Error(reason) => {
            put_string(&mut p, reason);
            KIND_ERROR
        }
        Frame::Tag(tag) => {
            p.put_slice(tag);
            KIND_TAG
        }
    };
    let mut out = BytesMut::with_capacity(HEADER_LEN + p.len());
    header(&mut out, kind, p.len());
    out.put_slice(&p);
    out.freeze()
}

/// Header and id of a DATA frame carrying `len` chunk bytes.
pub fn data_header(id: &ChunkId, len: usize) -> [u8; HEADER_LEN + 32] {
    let mut b = BytesMut::with_capacity(HEADER_LEN + 32);
    header(&mut b, KIND_DATA, 32 + len);
    b.put_slice(&id.0);
    let mut out = [0u8; HEADER_LEN + 32];
    out.copy_from_slice(&b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = encode(&f);
        let mut buf = BytesMut::from(&bytes[..]);
        let got = decode_frame(&mut buf, DEFAULT_MAX_FRAME)
            .expect("valid")
            .expect("complete");
        assert_eq!(got, f);
        assert!(buf.is_empty());
        // Every strict prefix is incomplete, never an error or a panic.
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode_frame(&mut buf, DEFAULT_MAX_FRAME), Ok(None));
        }
    }

    fn hello() -> Hello {
        let (manifest, _) = Manifest::from_fixed_chunks(&Bytes::from(vec![7u8; 1000]), 300);
        Hello {
            version: PROTOCOL_VERSION,
            transfer_id: 42,
            name: "disk.img".into(),
            connect_timeout: Duration::from_millis(1500),
            io_timeout: Duration::from_secs(30),
            finish_timeout: Duration::from_secs(300),
            chain: vec![
                "127.0.0.1:9000".parse().expect("addr"),
                "[::1]:9001".parse().expect("addr"),
            ],
            manifest: Arc::new(manifest),
            session: None,
        }
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame::Hello(hello()));
        roundtrip(Frame::Hello(Hello {
            session: Some(HelloSession {
                ticket: Bytes::from_static(b"STKT ticket bytes"),
                secret: [5; 32],
            }),
            ..hello()
        }));
        roundtrip(Frame::Tag([9; 32]));
        roundtrip(Frame::Have(vec![
            true, false, true, true, false, false, false, false, true,
        ]));
        roundtrip(Frame::Have(vec![]));
        roundtrip(Frame::Data {
            id: ChunkId::of(b"abc"),
            data: Bytes::from_static(b"abc"),
        });
        roundtrip(Frame::End);
        roundtrip(Frame::Keepalive);
        roundtrip(Frame::Error("nope".into()));
        roundtrip(Frame::Report(vec![NodeReport {
            addr: "10.0.0.1:7".parse().expect("addr"),
            ok: false,
            reason: Some("disk full".into()),
            bytes_received: 5,
            bytes_written: 3,
            elapsed: Duration::from_micros(1234),
        }]));
    }

    #[test]
    fn data_header_matches_encode() {
        let id = ChunkId::of(b"xyz");
        let full = encode(&Frame::Data {
            id,
            data: Bytes::from_static(b"xyz"),
        });
        assert_eq!(&full[..HEADER_LEN + 32], &data_header(&id, 3)[..]);
    }

    #[test]
    fn rejects_bad_input() {
        let mut b = BytesMut::from(&b"XX\x04\0\0\0\0"[..]);
        assert!(matches!(
            decode_frame(&mut b, 100),
            Err(FrameError::BadMagic(_))
        ));
        let mut b = BytesMut::from(&b"SC\x09\0\0\0\0"[..]);
        assert_eq!(decode_frame(&mut b, 100), Err(FrameError::UnknownKind(9)));
        let mut b = BytesMut::from(&b"SC\x03\0\0\x01\0"[..]);
        assert!(matches!(
            decode_frame(&mut b, 100),
            Err(FrameError::Oversize { len: 256, max: 100 })
        ));
        // END with a payload.
        let mut b = BytesMut::from(&b"SC\x04\0\0\0\x01z"[..]);
        assert!(matches!(
            decode_frame(&mut b, 100),
            Err(FrameError::Trailing(1, "END"))
        ));
        // DATA shorter than an id.
        let mut b = BytesMut::from(&b"SC\x03\0\0\0\x02ab"[..]);
        assert_eq!(
            decode_frame(&mut b, 100),
            Err(FrameError::Truncated("DATA"))
        );
        // Wrong version.
        let mut h = hello();
        h.version = 9;
        let mut b = BytesMut::from(&encode(&Frame::Hello(h))[..]);
        assert_eq!(
            decode_frame(&mut b, DEFAULT_MAX_FRAME),
            Err(FrameError::BadVersion(9))
        );
    }

    #[test]
    fn hello_with_lying_counts_is_rejected() {
        let bytes = encode(&Frame::Hello(hello()));
        // Cut the manifest short but fix up the header length.
        let cut = bytes.len() - 10;
        let mut v = bytes[..cut].to_vec();
        let len = (cut - HEADER_LEN) as u32;
        v[3..7].copy_from_slice(&len.to_be_bytes());
        let mut b = BytesMut::from(&v[..]);
        assert_eq!(
            decode_frame(&mut b, DEFAULT_MAX_FRAME),
            Err(FrameError::Truncated("HELLO"))
        );
    }

    /// A cheap deterministic fuzz: random mutations of valid frames must
    /// parse or fail, never panic.
    #[test]
    fn mutations_never_panic() {
        let seeds = [
            encode(&Frame::Hello(hello())),
            encode(&Frame::Have(vec![true; 17])),
            encode(&Frame::Report(vec![NodeReport {
                addr: "10.0.0.1:7".parse().expect("addr"),
                ok: true,
                reason: None,
                bytes_received: 1,
                bytes_written: 1,
                elapsed: Duration::ZERO,
            }])),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in &seeds {
            for _ in 0..3000 {
                let mut v = seed.to_vec();
                for _ in 0..(next() % 4 + 1) {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                if next() % 3 == 0 {
                    let n = (next() as usize) % v.len();
                    v.truncate(n);
                }
                let mut b = BytesMut::from(&v[..]);
                let _ = decode_frame(&mut b, DEFAULT_MAX_FRAME);
            }
        }
    }
}
