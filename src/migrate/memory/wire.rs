//! Frames of the WAN connection between a memory sender and receiver, in
//! the envelope both protocols share (`migrate::proto`). The sender turns the
//! tokenized migration stream into batches: a list of operations
//! (copy N literal bytes, take one raw page, resolve one page by id) plus one
//! blob holding the literal bytes and raw pages in order, zstd-compressed as
//! a whole (compressing pages one by one gains little). The receiver walks
//! the operations to rebuild QEMU's stream byte for byte.
//!
//! The connection is bidirectional: the receiver answers the `Hello` with
//! an `Ack` (accepted, or refused with the reason, e.g. a protocol
//! mismatch), asks its sender for pages it cannot find at its site
//! (`Pull`), and acknowledges the end.
//!
//! Protocol 2 adds the page codec (CloudNet redundancy cache and page
//! deltas, `codec::rcache`): its settings and a fresh cache generation
//! travel in the `Hello`, and pages that cross in full may go as `Coded`
//! operations (a codec frame in the blob, keyed by guest page so the
//! receiver finds the base of a delta).
//!
//! Protocol 3 writes strings (VM and group names, the `Ack`'s message) as
//! `migrate::proto` does for both protocols, with a be32 length the
//! receiver bounds; protocol 2 cut them at 255 bytes.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::migrate::codec::rcache::CodecConfig;
use crate::migrate::proto::{self, put_message, put_str, Payload};
pub use crate::migrate::proto::{read_envelope, Result, WireError, MAX_FRAME};
use crate::qemu::stream::PAGE_SIZE;
use crate::store::ChunkId;

/// Protocol version spoken in `Hello` (3: strings with a be32 length).
pub const PROTOCOL: u32 = 3;

const KIND_HELLO: u8 = 1;
const KIND_BATCH: u8 = 2;
const KIND_PULL: u8 = 3;
const KIND_PULLED: u8 = 4;
const KIND_END: u8 = 5;
const KIND_ACK: u8 = 6;

const OP_LITERAL: u8 = 0;
const OP_RAW: u8 = 1;
const OP_HASH: u8 = 2;
const OP_CODED: u8 = 3;

/// One step of rebuilding the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Copy this many bytes from the blob.
    Literal(u32),
    /// Copy one page from the blob.
    Raw,
    /// One page with this id: from the site store, or pulled.
    Hash(ChunkId),
    /// One page as a codec frame of `len` blob bytes; `key` names the
    /// guest page (see `Tokenizer::take_page_keys`).
    Coded { key: u64, len: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        protocol: u32,
        vm: String,
        group: Option<String>,
        /// Cache generation of this connection (fresh per connection, so
        /// no frame of another connection can match this state).
        generation: u32,
        /// Page codec settings; `None`: pages go raw (or by id).
        codec: Option<CodecConfig>,
    },
    Batch {
        ops: Vec<Op>,
        /// Blob length once decompressed.
        raw_len: u32,
        compressed: bool,
        blob: Bytes,
    },
    Pull(Vec<ChunkId>),
    Pulled(Vec<(ChunkId, Option<Bytes>)>),
    End {
        stream_len: u64,
        digest: u128,
    },
    Ack {
        ok: bool,
        message: String,
    },
}

impl Frame {
    pub fn encode(&self) -> Bytes {
        let mut p = BytesMut::new();
        let kind = match self {
            Frame::Hello {
                protocol,
                vm,
                group,
                generation,
                codec,
            } => {
                p.put_u32(*protocol);
                put_str(&mut p, vm);
                put_str(&mut p, group.as_deref().unwrap_or(""));
                p.put_u32(*generation);
                match codec {
                    None => p.put_u8(0),
                    Some(c) => {
                        p.put_u8(1);
                        p.put_u32(c.page_size as u32);
                        // 0 blocks per page: redundancy cache off.
                        p.put_u32(if c.cbr { c.blocks_per_page as u32 } else { 0 });
                        p.put_u64(c.cache_bytes as u64);
                        p.put_u8(u8::from(c.delta));
                        p.put_u32(c.delta_threshold as u32);
                        p.put_u64(c.delta_history_bytes as u64);
                    }
                }
                KIND_HELLO
            }
            Frame::Batch {
                ops,
                raw_len,
                compressed,
                blob,
            } => {
                p.put_u8(u8::from(*compressed));
                p.put_u32(*raw_len);
                p.put_u32(ops.len() as u32);
                for op in ops {
                    match op {
                        Op::Literal(n) => {
                            p.put_u8(OP_LITERAL);
                            p.put_u32(*n);
                        }
                        Op::Raw => p.put_u8(OP_RAW),
                        Op::Hash(id) => {
                            p.put_u8(OP_HASH);
                            p.put_slice(&id.0);
                        }
                        Op::Coded { key, len } => {
                            p.put_u8(OP_CODED);
                            p.put_u64(*key);
                            p.put_u32(*len);
                        }
                    }
                }
                p.put_slice(blob);
                KIND_BATCH
            }
            Frame::Pull(ids) => {
                for id in ids {
                    p.put_slice(&id.0);
                }
                KIND_PULL
            }
            Frame::Pulled(pages) => {
                for (id, data) in pages {
                    p.put_slice(&id.0);
                    match data {
                        Some(d) => {
                            p.put_u8(1);
                            p.put_slice(d);
                        }
                        None => p.put_u8(0),
                    }
                }
                KIND_PULLED
            }
            Frame::End { stream_len, digest } => {
                p.put_u64(*stream_len);
                p.put_u128(*digest);
                KIND_END
            }
            Frame::Ack { ok, message } => {
                p.put_u8(u8::from(*ok));
                put_message(&mut p, message);
                KIND_ACK
            }
        };
        proto::envelope(kind, &p)
    }

    pub fn decode(kind: u8, payload: Bytes) -> Result<Frame> {
        let bad = |w: &str| WireError::Malformed(w.to_string());
        let mut p = Payload::new(payload);
        match kind {
            KIND_HELLO => {
                let protocol = p.u32()?;
                if protocol != PROTOCOL {
                    // Another version's layout: report only the version,
                    // so the peer gets a clear refusal, not a parse error.
                    return Ok(Frame::Hello {
                        protocol,
                        vm: String::new(),
                        group: None,
                        generation: 0,
                        codec: None,
                    });
                }
                let vm = p.str()?;
                let group = p.str()?;
                let generation = p.u32()?;
                let codec = match p.u8()? {
                    0 => None,
                    1 => {
                        let page_size = p.u32()? as usize;
                        let blocks = p.u32()? as usize;
                        let cache_bytes =
                            usize::try_from(p.u64()?).map_err(|_| bad("cache size"))?;
                        let delta = p.u8()? != 0;
                        let delta_threshold = p.u32()? as usize;
                        let delta_history_bytes =
                            usize::try_from(p.u64()?).map_err(|_| bad("delta history size"))?;
                        Some(CodecConfig {
                            page_size,
                            cbr: blocks > 0,
                            blocks_per_page: blocks.max(1),
                            cache_bytes,
                            delta,
                            delta_threshold,
                            delta_history_bytes,
                            zstd_level: None,
                        })
                    }
                    _ => return Err(bad("codec flag")),
                };
                Ok(Frame::Hello {
                    protocol,
                    vm,
                    group: (!group.is_empty()).then_some(group),
                    generation,
                    codec,
                })
            }
            KIND_BATCH => {
                let compressed = p.u8()? != 0;
                let raw_len = p.u32()?;
                let n = p.u32()? as usize;
                // Every operation takes at least one byte.
                if raw_len as usize > MAX_FRAME || n > p.remaining() {
                    return Err(bad("batch sizes"));
                }
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    match p.u8()? {
                        OP_LITERAL => ops.push(Op::Literal(p.u32()?)),
                        OP_RAW => ops.push(Op::Raw),
                        OP_HASH => ops.push(Op::Hash(p.id()?)),
                        OP_CODED => {
                            let key = p.u64()?;
                            let len = p.u32()?;
                            ops.push(Op::Coded { key, len });
                        }
                        t => return Err(WireError::Malformed(format!("operation {t}"))),
                    }
                }
                Ok(Frame::Batch {
                    ops,
                    raw_len,
                    compressed,
                    blob: p.rest(),
                })
            }
            KIND_PULL => {
                if !p.remaining().is_multiple_of(32) {
                    return Err(bad("pull request length"));
                }
                let mut ids = Vec::with_capacity(p.remaining() / 32);
                while p.has_remaining() {
                    ids.push(p.id()?);
                }
                Ok(Frame::Pull(ids))
            }
            KIND_PULLED => {
                let mut pages = Vec::new();
                while p.has_remaining() {
                    let id = p.id()?;
                    let data = if p.u8()? != 0 {
                        Some(p.bytes(PAGE_SIZE)?)
                    } else {
                        None
                    };
                    pages.push((id, data));
                }
                Ok(Frame::Pulled(pages))
            }
            KIND_END => Ok(Frame::End {
                stream_len: p.u64()?,
                digest: p.u128()?,
            }),
            KIND_ACK => Ok(Frame::Ack {
                ok: p.u8()? != 0,
                message: p.str()?,
            }),
            k => Err(WireError::Malformed(format!("frame kind {k}"))),
        }
    }
}

/// Read one frame; `None` on a clean end of connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>> {
    match read_envelope(r).await? {
        Some((kind, payload)) => Frame::decode(kind, payload).map(Some),
        None => Ok(None),
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<()> {
    proto::write_encoded(w, &f.encode()).await?;
    Ok(())
}

/// Decompress (if needed) a batch blob to exactly `raw_len` bytes.
pub fn open_blob(blob: &Bytes, raw_len: u32, compressed: bool) -> Result<Bytes> {
    let out = if compressed {
        Bytes::from(
            zstd::bulk::decompress(blob, raw_len as usize)
                .map_err(|e| WireError::Malformed(format!("zstd: {e}")))?,
        )
    } else {
        blob.clone()
    };
    if out.len() != raw_len as usize {
        return Err(WireError::Malformed(format!(
            "batch blob is {} bytes, expected {raw_len}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let id = ChunkId::of(b"x");
        let frames = vec![
            Frame::Hello {
                protocol: PROTOCOL,
                vm: "vm1".into(),
                group: Some("g".into()),
                generation: 7,
                codec: None,
            },
            Frame::Hello {
                protocol: PROTOCOL,
                vm: "vm2".into(),
                group: None,
                generation: 8,
                codec: Some(CodecConfig {
                    zstd_level: None,
                    ..CodecConfig::default()
                }),
            },
            Frame::Batch {
                ops: vec![
                    Op::Literal(3),
                    Op::Raw,
                    Op::Hash(id),
                    Op::Coded { key: 5, len: 0 },
                ],
                raw_len: 7,
                compressed: false,
                blob: Bytes::from_static(b"abcdefg"),
            },
            Frame::Pull(vec![id, id]),
            Frame::Pulled(vec![
                (id, Some(Bytes::from(vec![7u8; PAGE_SIZE]))),
                (id, None),
            ]),
            Frame::End {
                stream_len: 99,
                digest: 12345,
            },
            Frame::Ack {
                ok: false,
                message: "nope".into(),
            },
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        let mut r = &buf[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut r).await.unwrap().unwrap(), f);
        }
        assert!(read_frame(&mut r).await.unwrap().is_none());
    }

    #[test]
    fn truncated_or_unknown_frames_are_errors() {
        assert!(Frame::decode(KIND_BATCH, Bytes::from_static(b"\0\0\0\0\x05\0\0\0\x09")).is_err());
        assert!(Frame::decode(99, Bytes::new()).is_err());
        assert!(Frame::decode(KIND_PULL, Bytes::from_static(b"abc")).is_err());
    }

    #[test]
    fn hello_carries_a_300_byte_non_ascii_vm_name_whole() {
        // Protocol 2 cut names at 255 bytes, mid-character: the receiver
        // then refused the hello as "not UTF-8".
        let vm = "ß".repeat(150);
        assert_eq!(vm.len(), 300);
        let hello = Frame::Hello {
            protocol: PROTOCOL,
            vm: vm.clone(),
            group: Some("g".repeat(128)),
            generation: 1,
            codec: None,
        };
        let b = hello.encode();
        match Frame::decode(b[0], b.slice(5..)).unwrap() {
            Frame::Hello { vm: got, .. } => assert_eq!(got, vm),
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn hello_with_an_over_long_name_length_is_refused() {
        // The length says 1 MiB: refused before anything is allocated.
        let mut p = BytesMut::new();
        p.put_u32(PROTOCOL);
        p.put_u32(1 << 20);
        p.put_slice(b"vm");
        let err = Frame::decode(KIND_HELLO, p.freeze()).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        // A length within the limit but beyond the frame.
        let mut p = BytesMut::new();
        p.put_u32(PROTOCOL);
        p.put_u32(300);
        p.put_slice(b"vm");
        let err = Frame::decode(KIND_HELLO, p.freeze()).unwrap_err();
        assert!(err.to_string().contains("overruns"), "{err}");
    }

    #[test]
    fn hello_of_another_protocol_decodes_to_its_version_only() {
        // Protocol 1's hello: version, vm, group, nothing else.
        let p = Bytes::from_static(b"\0\0\0\x01\x03vm1\x00");
        match Frame::decode(KIND_HELLO, p).unwrap() {
            Frame::Hello {
                protocol, codec, ..
            } => {
                assert_eq!(protocol, 1);
                assert!(codec.is_none());
            }
            f => panic!("{f:?}"),
        }
    }
}
