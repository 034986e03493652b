//! The peer wire between swarm agents (TCP): frames of
//! `"SW" kind:u8 len:u32be payload`.
//!
//! ```text
//! client (downloader)                          server (a peer holding chunks)
//!   HELLO version digest nonce_c addr ───────▶
//!          ◀───────────── WELCOME version nonce_s tag_s   (or ERROR: version, swarm)
//!   AUTH tag_c ──────────────────────────────▶            (or ERROR: bad tag; closed)
//!   GET index | HAVE? ───────────────────────▶  (pipelined, a bounded window)
//!          ◀───────────── CHUNK index bytes | MISSING index | HAVE bitmap
//! ```
//!
//! Both ends prove they know the swarm's session secret (which the tracker
//! hands only to callers allowed to read the object) with keyed BLAKE3 tags
//! over both nonces and the manifest digest, so neither a stranger nor a
//! node of another swarm gets or serves chunks. Chunk bytes are checked by
//! the receiver against the manifest's id before it stores or serves them:
//! a peer that knows the secret and lies is caught by the ids, not by the
//! tags. Every frame is bounded before anything is allocated: control
//! frames by [`MAX_CONTROL`] (a bitmap of the manifest at most), a chunk by
//! the length the manifest gives it.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the peer wire this build speaks (in HELLO and WELCOME).
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 2] = b"SW";
pub const HEADER: usize = 7;
/// Largest advertised address in a HELLO.
pub const MAX_ADDR: usize = 64;
/// Largest ERROR message.
pub const MAX_MESSAGE: usize = 1024;
/// Largest non-chunk frame: a bitmap of the largest swarm manifest.
pub const MAX_CONTROL: usize = chunk_api::swarm::MAX_SWARM_CHUNKS / 8 + 64;

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const AUTH: u8 = 3;
const GET: u8 = 4;
const CHUNK: u8 = 5;
const MISSING: u8 = 6;
const HAVE_REQ: u8 = 7;
const HAVE: u8 = 8;
const ERROR: u8 = 9;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u32,
        digest: [u8; 32],
        nonce: [u8; 32],
        /// Where the client serves its own chunks (`IP:PORT`).
        addr: String,
    },
    Welcome {
        version: u32,
        nonce: [u8; 32],
        tag: [u8; 32],
    },
    Auth {
        tag: [u8; 32],
    },
    Get {
        index: u32,
    },
    Chunk {
        index: u32,
        data: Bytes,
    },
    Missing {
        index: u32,
    },
    HaveRequest,
    Have {
        bitmap: Bytes,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a swarm peer frame (bad magic)")]
    Magic,
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {len} bytes exceeds the {limit}-byte limit for its kind")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("peer speaks swarm wire version {found}, this build speaks {VERSION}")]
    Version { found: u32 },
    #[error("peer closed the connection")]
    Closed,
    #[error("{0}")]
    Io(String),
}

/// What the reader accepts: the longest chunk of the manifest (a CHUNK
/// frame is 4 bytes of index plus at most that).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_chunk: usize,
}

impl Limits {
    fn for_kind(&self, kind: u8) -> usize {
        match kind {
            CHUNK => 4 + self.max_chunk,
            _ => MAX_CONTROL,
        }
    }
}

/// Checks a frame header; answers the kind and payload length.
pub fn parse_header(h: &[u8; HEADER], limits: &Limits) -> Result<(u8, usize), WireError> {
    if &h[..2] != MAGIC {
        return Err(WireError::Magic);
    }
    let kind = h[2];
    if !(HELLO..=ERROR).contains(&kind) {
        return Err(WireError::Kind(kind));
    }
    let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
    let limit = limits.for_kind(kind);
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok((kind, len))
}

fn arr32(b: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[..32]);
    a
}

fn u32_at(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A payload of `kind` into a frame. HELLO and WELCOME check the version
/// first, so a peer of another version is told both numbers whatever the
/// rest of its frame looks like.
pub fn decode(kind: u8, p: Bytes) -> Result<Frame, WireError> {
    let exact = |n: usize, what| {
        if p.len() == n {
            Ok(())
        } else {
            Err(WireError::Malformed(what))
        }
    };
    let version = |what| {
        if p.len() < 4 {
            return Err(WireError::Malformed(what));
        }
        match u32_at(&p) {
            VERSION => Ok(VERSION),
            found => Err(WireError::Version { found }),
        }
    };
    Ok(match kind {
        HELLO => {
            let version = version("HELLO")?;
            if p.len() < 69 || p.len() != 69 + p[68] as usize || p[68] as usize > MAX_ADDR {
                return Err(WireError::Malformed("HELLO"));
            }
            let addr = std::str::from_utf8(&p[69..])
                .map_err(|_| WireError::Malformed("HELLO"))?
                .to_string();
            Frame::Hello {
                version,
                digest: arr32(&p[4..36]),
                nonce: arr32(&p[36..68]),
                addr,
            }
        }
        WELCOME => {
            let version = version("WELCOME")?;
            exact(68, "WELCOME")?;
            Frame::Welcome {
                version,
                nonce: arr32(&p[4..36]),
                tag: arr32(&p[36..68]),
            }
        }
        AUTH => {
            exact(32, "AUTH")?;
            Frame::Auth { tag: arr32(&p) }
        }
        GET => {
            exact(4, "GET")?;
            Frame::Get { index: u32_at(&p) }
        }
        MISSING => {
            exact(4, "MISSING")?;
            Frame::Missing { index: u32_at(&p) }
        }
        CHUNK => {
            if p.len() < 4 {
                return Err(WireError::Malformed("CHUNK"));
            }
            Frame::Chunk {
                index: u32_at(&p),
                data: p.slice(4..),
            }
        }
        HAVE_REQ => {
            exact(0, "HAVE?")?;
            Frame::HaveRequest
        }
        HAVE => Frame::Have { bitmap: p },
        ERROR => {
            if p.len() > MAX_MESSAGE {
                return Err(WireError::Malformed("ERROR"));
            }
            Frame::Error {
                message: String::from_utf8_lossy(&p).into_owned(),
            }
        }
        k => return Err(WireError::Kind(k)),
    })
}

/// The frame's bytes (a CHUNK's data is copied once here; chunks are small).
pub fn encode(f: &Frame) -> Vec<u8> {
    let (kind, payload): (u8, Vec<u8>) = match f {
        Frame::Hello {
            version,
            digest,
            nonce,
            addr,
        } => {
            let addr = &addr.as_bytes()[..addr.len().min(MAX_ADDR)];
            let mut p = Vec::with_capacity(69 + addr.len());
            p.extend_from_slice(&version.to_be_bytes());
            p.extend_from_slice(digest);
            p.extend_from_slice(nonce);
            p.push(addr.len() as u8);
            p.extend_from_slice(addr);
            (HELLO, p)
        }
        Frame::Welcome {
            version,
            nonce,
            tag,
        } => {
            let mut p = Vec::with_capacity(68);
            p.extend_from_slice(&version.to_be_bytes());
            p.extend_from_slice(nonce);
            p.extend_from_slice(tag);
            (WELCOME, p)
        }
        Frame::Auth { tag } => (AUTH, tag.to_vec()),
        Frame::Get { index } => (GET, index.to_be_bytes().to_vec()),
        Frame::Missing { index } => (MISSING, index.to_be_bytes().to_vec()),
        Frame::Chunk { index, data } => {
            let mut p = Vec::with_capacity(4 + data.len());
            p.extend_from_slice(&index.to_be_bytes());
            p.extend_from_slice(data);
            (CHUNK, p)
        }
        Frame::HaveRequest => (HAVE_REQ, Vec::new()),
        Frame::Have { bitmap } => (HAVE, bitmap.to_vec()),
        Frame::Error { message } => {
            let mut m = message.as_bytes();
            if m.len() > MAX_MESSAGE {
                m = &m[..MAX_MESSAGE];
            }
            (ERROR, m.to_vec())
        }
    };
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Every frame in `data`, in order (the fuzz entry point and tests): stops
/// at the first error or at a truncated frame.
pub fn decode_all(data: &[u8], limits: &Limits) -> Result<Vec<Frame>, WireError> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= HEADER {
        let mut h = [0u8; HEADER];
        h.copy_from_slice(&rest[..HEADER]);
        let (kind, len) = parse_header(&h, limits)?;
        let body = rest
            .get(HEADER..HEADER + len)
            .ok_or(WireError::Malformed("truncated"))?;
        out.push(decode(kind, Bytes::copy_from_slice(body))?);
        rest = &rest[HEADER + len..];
    }
    Ok(out)
}

pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<Frame, WireError> {
    let mut h = [0u8; HEADER];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(WireError::Closed),
        Err(e) => return Err(WireError::Io(e.to_string())),
    }
    let (kind, len) = parse_header(&h, limits)?;
    // Allocated only once the length is within the kind's limit.
    let mut p = vec![0u8; len];
    r.read_exact(&mut p)
        .await
        .map_err(|e| WireError::Io(e.to_string()))?;
    decode(kind, Bytes::from(p))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), WireError> {
    w.write_all(&encode(f))
        .await
        .map_err(|e| WireError::Io(e.to_string()))
}

/// What both tags are computed over: the swarm, both nonces and the
/// client's advertised address (so a man in the middle cannot swap it).
pub fn transcript(digest: &[u8; 32], client: &[u8; 32], server: &[u8; 32], addr: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(96 + addr.len());
    t.extend_from_slice(digest);
    t.extend_from_slice(client);
    t.extend_from_slice(server);
    t.extend_from_slice(addr.as_bytes());
    t
}

pub const WELCOME_CONTEXT: &[u8] = b"strato swarm welcome v1";
pub const AUTH_CONTEXT: &[u8] = b"strato swarm auth v1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let limits = Limits { max_chunk: 100 };
        let frames = [
            Frame::Hello {
                version: VERSION,
                digest: [1; 32],
                nonce: [2; 32],
                addr: "10.0.0.1:7600".into(),
            },
            Frame::Welcome {
                version: VERSION,
                nonce: [3; 32],
                tag: [4; 32],
            },
            Frame::Auth { tag: [5; 32] },
            Frame::Get { index: 7 },
            Frame::Chunk {
                index: 7,
                data: Bytes::from_static(b"abc"),
            },
            Frame::Missing { index: 9 },
            Frame::HaveRequest,
            Frame::Have {
                bitmap: Bytes::from_static(&[0xff, 1]),
            },
            Frame::Error {
                message: "no".into(),
            },
        ];
        let mut all = Vec::new();
        for f in &frames {
            all.extend(encode(f));
        }
        assert_eq!(decode_all(&all, &limits).unwrap(), frames);
    }

    #[test]
    fn bounds_and_versions_are_checked_before_allocating() {
        let limits = Limits { max_chunk: 100 };
        let big = encode(&Frame::Chunk {
            index: 0,
            data: Bytes::from(vec![0u8; 101]),
        });
        assert!(matches!(
            decode_all(&big, &limits),
            Err(WireError::TooLarge { .. })
        ));
        let mut h = *b"SW\x08\xff\xff\xff\xff";
        assert!(matches!(
            parse_header(&h, &limits),
            Err(WireError::TooLarge { .. })
        ));
        h[2] = 42;
        assert_eq!(parse_header(&h, &limits), Err(WireError::Kind(42)));
        let hello = encode(&Frame::Hello {
            version: 7,
            digest: [0; 32],
            nonce: [0; 32],
            addr: String::new(),
        });
        let e = decode_all(&hello, &limits).unwrap_err();
        assert_eq!(e, WireError::Version { found: 7 });
        assert!(e.to_string().contains("version 7") && e.to_string().contains("speaks 1"));
        assert_eq!(
            decode_all(b"XX\x01\0\0\0\0", &limits),
            Err(WireError::Magic)
        );
    }
}
