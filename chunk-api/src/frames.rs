//! Batch frames of the chunk API: many small chunks (4 KiB pages of a
//! migration) in one request instead of one request each.
//!
//! ```text
//! POST /chunks?put   body: frames; stores them all, durable on 200
//!                    answer: "stored N new of M\n"
//! POST /chunks?get   body: hex ids, one per line; answer: frames of the
//!                    held ones (missing ids are simply absent)
//! frame:  id (32 bytes) | length (u32, big endian) | bytes
//! ```
//!
//! A put batch is all or nothing: every frame is checked against its id
//! before anything is stored, so a wrong byte changes nothing.

use bytes::{BufMut, Bytes, BytesMut};

use strato_store::ChunkId;

/// Bytes of framing before each chunk.
pub const FRAME_HEADER_LEN: usize = 36;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("truncated frame at byte {0}")]
    Truncated(usize),
    #[error("frame at byte {at} declares {len} bytes, more than the {max} allowed")]
    TooLong { at: usize, len: usize, max: usize },
}

/// Append one frame to `out`.
pub fn put_frame(out: &mut BytesMut, id: &ChunkId, data: &[u8]) {
    out.reserve(FRAME_HEADER_LEN + data.len());
    out.put_slice(&id.0);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

/// Split a body into (id, bytes) frames without copying the bytes. Does
/// not check ids against bytes: callers decide what a mismatch means.
pub fn parse_frames(body: &Bytes, max_chunk: usize) -> Result<Vec<(ChunkId, Bytes)>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let Some(header) = body.get(at..at + FRAME_HEADER_LEN) else {
            return Err(FrameError::Truncated(at));
        };
        let mut id = [0u8; 32];
        id.copy_from_slice(&header[..32]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&header[32..]);
        let len = u32::from_be_bytes(len) as usize;
        if len > max_chunk {
            return Err(FrameError::TooLong {
                at,
                len,
                max: max_chunk,
            });
        }
        let start = at + FRAME_HEADER_LEN;
        if body.len() - start < len {
            return Err(FrameError::Truncated(at));
        }
        out.push((ChunkId(id), body.slice(start..start + len)));
        at = start + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_caught() {
        let a = Bytes::from_static(b"hello");
        let b = Bytes::from(vec![7u8; 4096]);
        let mut body = BytesMut::new();
        put_frame(&mut body, &ChunkId::of(&a), &a);
        put_frame(&mut body, &ChunkId::of(&b), &b);
        let body = body.freeze();
        let frames = parse_frames(&body, 1 << 20).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], (ChunkId::of(&a), a));
        assert_eq!(frames[1].1, b);
        for cut in [1, 35, 36, 40, body.len() - 1] {
            assert!(parse_frames(&body.slice(..cut), 1 << 20).is_err(), "{cut}");
        }
        assert!(matches!(
            parse_frames(&body, 100),
            Err(FrameError::TooLong { .. })
        ));
        assert!(parse_frames(&Bytes::new(), 1).unwrap().is_empty());
    }
}
