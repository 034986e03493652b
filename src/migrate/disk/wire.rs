//! Framing of the WAN connection between `migrate disk-send` and
//! `migrate disk-recv` (versioned by [`DISK_PROTOCOL`] in `Hello`).
//!
//! Frames go in the envelope both protocols share (`migrate::proto`:
//! `u8 kind, be32 length, payload`, strings with a bounded be32 length).
//! The sender turns the
//! writes of QEMU's mirror job into batches: operations that say where each
//! 4 KiB block goes and how it crosses (zero range, id the destination site
//! holds, id another VM of the group claimed, literal block with its id,
//! unaligned literal bytes) plus one blob with the literal bytes in order,
//! zstd-compressed as a whole. `Flush` / `Flushed` carry NBD flushes end to
//! end: the sender acknowledges QEMU's flush only once the receiver wrote
//! and flushed everything before it into the destination export.
//!
//! A block sent as claimed by another sender of the group normally reaches
//! the destination site through that sender's receiver; if it does not in
//! time (that sender died, or is slow), the receiver `Pull`s it from its own
//! sender, which keeps such blocks until the receiver says the batch is
//! `Applied`.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::migrate::proto::{self, put_message, put_str, Payload};
pub use crate::migrate::proto::{Result, WireError, MAX_FRAME};
use crate::store::ChunkId;

/// Protocol version spoken in `Hello` and `Welcome`.
pub const DISK_PROTOCOL: u32 = 1;
/// Disk blocks deduplicated by id.
pub const BLOCK: usize = 4096;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_BATCH: u8 = 3;
const KIND_FLUSH: u8 = 4;
const KIND_FLUSHED: u8 = 5;
const KIND_END: u8 = 6;
const KIND_DONE: u8 = 7;
const KIND_PULL: u8 = 8;
const KIND_PULLED: u8 = 9;
const KIND_APPLIED: u8 = 10;

const OP_ZERO: u8 = 0;
const OP_SITE: u8 = 1;
const OP_GROUP: u8 = 2;
const OP_BLOCK: u8 = 3;
const OP_BYTES: u8 = 4;

/// Where one range of the disk comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// `len` zero bytes at `offset`.
    Zero { offset: u64, len: u32 },
    /// One block the destination site holds (image block index or chunk).
    Site { offset: u64, id: ChunkId },
    /// One block another sender of the group claimed first; it reaches the
    /// site through that sender's receiver.
    Group { offset: u64, id: ChunkId },
    /// One block from the blob, with its id (checked, then stored).
    Block { offset: u64, id: ChunkId },
    /// `len` unaligned bytes from the blob.
    Bytes { offset: u64, len: u32 },
}

impl DiskOp {
    pub fn offset(&self) -> u64 {
        match *self {
            DiskOp::Zero { offset, .. }
            | DiskOp::Site { offset, .. }
            | DiskOp::Group { offset, .. }
            | DiskOp::Block { offset, .. }
            | DiskOp::Bytes { offset, .. } => offset,
        }
    }

    pub fn len(&self) -> u64 {
        match *self {
            DiskOp::Zero { len, .. } | DiskOp::Bytes { len, .. } => len as u64,
            _ => BLOCK as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this op takes from the batch's blob.
    pub fn blob_len(&self) -> usize {
        match *self {
            DiskOp::Block { .. } => BLOCK,
            DiskOp::Bytes { len, .. } => len as usize,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskFrame {
    Hello {
        protocol: u32,
        vm: String,
        group: Option<String>,
    },
    /// The receiver's answer: the destination export's size.
    Welcome {
        protocol: u32,
        size: u64,
    },
    Batch {
        seq: u64,
        ops: Vec<DiskOp>,
        /// Blob length once decompressed.
        raw_len: u32,
        compressed: bool,
        blob: Bytes,
    },
    /// Everything before this is to be written and flushed.
    Flush {
        seq: u64,
    },
    Flushed {
        seq: u64,
    },
    /// The source is done (mirror completed or cancelled).
    End,
    /// The receiver's last word: success, or why it stopped.
    Done {
        ok: bool,
        message: String,
    },
    /// Receiver asks for group blocks that never reached its site.
    Pull(Vec<ChunkId>),
    /// The sender's answer (None: it no longer holds the block).
    Pulled(Vec<(ChunkId, Option<Bytes>)>),
    /// The receiver wrote this batch: its pullable blocks can go.
    Applied {
        seq: u64,
    },
}

impl DiskFrame {
    pub fn encode(&self) -> Bytes {
        let mut p = BytesMut::new();
        let kind = match self {
            DiskFrame::Hello {
                protocol,
                vm,
                group,
            } => {
                p.put_u32(*protocol);
                put_str(&mut p, vm);
                put_str(&mut p, group.as_deref().unwrap_or(""));
                KIND_HELLO
            }
            DiskFrame::Welcome { protocol, size } => {
                p.put_u32(*protocol);
                p.put_u64(*size);
                KIND_WELCOME
            }
            DiskFrame::Batch {
                seq,
                ops,
                raw_len,
                compressed,
                blob,
            } => {
                p.put_u64(*seq);
                p.put_u8(u8::from(*compressed));
                p.put_u32(*raw_len);
                p.put_u32(ops.len() as u32);
                for op in ops {
                    match *op {
                        DiskOp::Zero { offset, len } => {
                            p.put_u8(OP_ZERO);
                            p.put_u64(offset);
                            p.put_u32(len);
                        }
                        DiskOp::Site { offset, id } => {
                            p.put_u8(OP_SITE);
                            p.put_u64(offset);
                            p.put_slice(&id.0);
                        }
                        DiskOp::Group { offset, id } => {
                            p.put_u8(OP_GROUP);
                            p.put_u64(offset);
                            p.put_slice(&id.0);
                        }
                        DiskOp::Block { offset, id } => {
                            p.put_u8(OP_BLOCK);
                            p.put_u64(offset);
                            p.put_slice(&id.0);
                        }
                        DiskOp::Bytes { offset, len } => {
                            p.put_u8(OP_BYTES);
                            p.put_u64(offset);
                            p.put_u32(len);
                        }
                    }
                }
                p.put_slice(blob);
                KIND_BATCH
            }
            DiskFrame::Flush { seq } => {
                p.put_u64(*seq);
                KIND_FLUSH
            }
            DiskFrame::Flushed { seq } => {
                p.put_u64(*seq);
                KIND_FLUSHED
            }
            DiskFrame::End => KIND_END,
            DiskFrame::Done { ok, message } => {
                p.put_u8(u8::from(*ok));
                put_message(&mut p, message);
                KIND_DONE
            }
            DiskFrame::Pull(ids) => {
                p.put_u32(ids.len() as u32);
                for id in ids {
                    p.put_slice(&id.0);
                }
                KIND_PULL
            }
            DiskFrame::Pulled(blocks) => {
                p.put_u32(blocks.len() as u32);
                for (id, data) in blocks {
                    p.put_slice(&id.0);
                    match data {
                        Some(d) => {
                            p.put_u32(d.len() as u32);
                            p.put_slice(d);
                        }
                        None => p.put_u32(u32::MAX),
                    }
                }
                KIND_PULLED
            }
            DiskFrame::Applied { seq } => {
                p.put_u64(*seq);
                KIND_APPLIED
            }
        };
        proto::envelope(kind, &p)
    }

    pub fn decode(kind: u8, payload: Bytes) -> Result<DiskFrame> {
        let mut b = Payload::new(payload);
        let f = match kind {
            KIND_HELLO => {
                let protocol = b.u32()?;
                let vm = b.str()?;
                let group = b.str()?;
                DiskFrame::Hello {
                    protocol,
                    vm,
                    group: (!group.is_empty()).then_some(group),
                }
            }
            KIND_WELCOME => DiskFrame::Welcome {
                protocol: b.u32()?,
                size: b.u64()?,
            },
            KIND_BATCH => {
                let seq = b.u64()?;
                let compressed = b.u8()? != 0;
                let raw_len = b.u32()?;
                let n = b.u32()? as usize;
                // Each op is at least 13 bytes: a count beyond that is a lie.
                if n > b.remaining() / 13 {
                    return Err(WireError::Malformed(format!("{n} ops in a short frame")));
                }
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    let code = b.u8()?;
                    let offset = b.u64()?;
                    ops.push(match code {
                        OP_ZERO => DiskOp::Zero {
                            offset,
                            len: b.u32()?,
                        },
                        OP_SITE => DiskOp::Site {
                            offset,
                            id: b.id()?,
                        },
                        OP_GROUP => DiskOp::Group {
                            offset,
                            id: b.id()?,
                        },
                        OP_BLOCK => DiskOp::Block {
                            offset,
                            id: b.id()?,
                        },
                        OP_BYTES => DiskOp::Bytes {
                            offset,
                            len: b.u32()?,
                        },
                        c => return Err(WireError::Malformed(format!("unknown op {c}"))),
                    });
                }
                let want: usize = ops.iter().map(DiskOp::blob_len).sum();
                if want != raw_len as usize {
                    return Err(WireError::Malformed(format!(
                        "ops take {want} blob bytes, batch says {raw_len}"
                    )));
                }
                DiskFrame::Batch {
                    seq,
                    ops,
                    raw_len,
                    compressed,
                    blob: b.rest(),
                }
            }
            KIND_FLUSH => DiskFrame::Flush { seq: b.u64()? },
            KIND_FLUSHED => DiskFrame::Flushed { seq: b.u64()? },
            KIND_END => DiskFrame::End,
            KIND_DONE => DiskFrame::Done {
                ok: b.u8()? != 0,
                message: b.str()?,
            },
            KIND_PULL => {
                let n = b.u32()? as usize;
                if n > b.remaining() / 32 {
                    return Err(WireError::Malformed(format!("{n} ids in a short frame")));
                }
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push(b.id()?);
                }
                DiskFrame::Pull(ids)
            }
            KIND_PULLED => {
                let n = b.u32()? as usize;
                if n > b.remaining() / 36 {
                    return Err(WireError::Malformed(format!("{n} blocks in a short frame")));
                }
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = b.id()?;
                    let len = b.u32()?;
                    if len == u32::MAX {
                        blocks.push((id, None));
                        continue;
                    }
                    blocks.push((id, Some(b.bytes(len as usize)?)));
                }
                DiskFrame::Pulled(blocks)
            }
            KIND_APPLIED => DiskFrame::Applied { seq: b.u64()? },
            k => return Err(WireError::Malformed(format!("unknown frame kind {k}"))),
        };
        Ok(f)
    }
}

/// Write one frame; returns its size on the wire.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &DiskFrame) -> Result<u64> {
    proto::write_encoded(w, &f.encode()).await
}

/// Read one frame; returns it and its size on the wire.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<(DiskFrame, u64)> {
    let (kind, payload) = proto::read_envelope(r)
        .await?
        .ok_or_else(|| WireError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)))?;
    let size = (proto::HEADER + payload.len()) as u64;
    Ok((DiskFrame::decode(kind, payload)?, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: DiskFrame) {
        let b = f.encode();
        let back = DiskFrame::decode(b[0], b.slice(5..)).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn frames_roundtrip() {
        let id = ChunkId::of(b"x");
        roundtrip(DiskFrame::Hello {
            protocol: DISK_PROTOCOL,
            vm: "a".into(),
            group: Some("g".into()),
        });
        roundtrip(DiskFrame::Welcome {
            protocol: 1,
            size: 1 << 30,
        });
        roundtrip(DiskFrame::Batch {
            seq: 3,
            ops: vec![
                DiskOp::Zero {
                    offset: 0,
                    len: 8192,
                },
                DiskOp::Site { offset: 8192, id },
                DiskOp::Group { offset: 12288, id },
                DiskOp::Block { offset: 16384, id },
                DiskOp::Bytes {
                    offset: 20480,
                    len: 3,
                },
            ],
            raw_len: 4099,
            compressed: false,
            blob: Bytes::from(vec![7u8; 4099]),
        });
        roundtrip(DiskFrame::Flush { seq: 9 });
        roundtrip(DiskFrame::Flushed { seq: 9 });
        roundtrip(DiskFrame::End);
        roundtrip(DiskFrame::Done {
            ok: false,
            message: "no".into(),
        });
        roundtrip(DiskFrame::Pull(vec![id, id]));
        roundtrip(DiskFrame::Pulled(vec![
            (id, Some(Bytes::from_static(b"x"))),
            (id, None),
        ]));
        roundtrip(DiskFrame::Applied { seq: 4 });
    }

    #[test]
    fn rejects_lies() {
        // An op count far beyond the payload.
        let mut p = BytesMut::new();
        p.put_u64(1);
        p.put_u8(0);
        p.put_u32(0);
        p.put_u32(u32::MAX);
        assert!(DiskFrame::decode(KIND_BATCH, p.freeze()).is_err());
        // Blob length disagreeing with the ops.
        let f = DiskFrame::Batch {
            seq: 1,
            ops: vec![DiskOp::Bytes { offset: 0, len: 5 }],
            raw_len: 4,
            compressed: false,
            blob: Bytes::from_static(b"abcd"),
        };
        let b = f.encode();
        assert!(DiskFrame::decode(b[0], b.slice(5..)).is_err());
        assert!(DiskFrame::decode(99, Bytes::new()).is_err());
    }
}
