//! The framing both migration protocols (memory, `memory::wire`, and disk,
//! `disk::wire`) share on their WAN connection.
//!
//! Every frame is `u8 kind, be32 length, payload`, the payload at most
//! [`MAX_FRAME`] bytes. Inside a payload, integers are big-endian and a
//! string is `be32 length, UTF-8 bytes`, at most [`MAX_STRING`] bytes. The
//! reader checks every length against what is left of the frame and
//! against these limits before it allocates, so a bad peer gets a clear
//! refusal, never an allocation of its choosing or a silently cut name.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::store::ChunkId;

/// Upper bound on one frame's payload, so a bad peer cannot make us
/// allocate much.
pub const MAX_FRAME: usize = 64 << 20;
/// Upper bound on one string (VM and group names, refusal messages).
pub const MAX_STRING: usize = 64 << 10;
/// Bytes before a frame's payload: kind and length.
pub const HEADER: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("WAN connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("WAN connection: malformed frame: {0}")]
    Malformed(String),
    #[error("WAN connection: frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// One frame on the wire: header, then `payload`.
pub fn envelope(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + payload.len());
    out.put_u8(kind);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Read one frame's kind and payload; `None` on a clean end of connection
/// between frames.
pub async fn read_envelope<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<(u8, Bytes)>> {
    let mut head = [0u8; HEADER];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], Bytes::from(payload))))
}

/// Write encoded frames; returns their size on the wire.
pub async fn write_encoded<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<u64> {
    w.write_all(frame).await?;
    Ok(frame.len() as u64)
}

/// A string field. Names are checked with [`check_string`] before they are
/// sent; a longer string here would be refused by the receiver.
pub fn put_str(p: &mut BytesMut, s: &str) {
    p.put_u32(s.len() as u32);
    p.put_slice(s.as_bytes());
}

/// A human-readable reason (a refusal, an error): cut to [`MAX_STRING`] at
/// a character boundary if longer, since the peer only shows it and the
/// sending side logs it whole.
pub fn put_message(p: &mut BytesMut, s: &str) {
    let mut end = s.len().min(MAX_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_str(p, &s[..end]);
}

/// Whether `s` fits a string field; `what` names it in the refusal.
pub fn check_string(what: &str, s: &str) -> std::result::Result<(), String> {
    if s.len() > MAX_STRING {
        Err(format!(
            "{what} is {} bytes, the migration protocols carry at most {MAX_STRING}",
            s.len()
        ))
    } else {
        Ok(())
    }
}

/// A frame's payload being decoded: every read checks what is left.
pub struct Payload {
    buf: Bytes,
}

impl Payload {
    pub fn new(buf: Bytes) -> Payload {
        Payload { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn has_remaining(&self) -> bool {
        !self.buf.is_empty()
    }

    fn need(&self, n: usize) -> Result<()> {
        if self.buf.len() < n {
            Err(WireError::Malformed("truncated frame".into()))
        } else {
            Ok(())
        }
    }

    pub fn u8(&mut self) -> Result<u8> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub fn u64(&mut self) -> Result<u64> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    pub fn u128(&mut self) -> Result<u128> {
        self.need(16)?;
        Ok(self.buf.get_u128())
    }

    pub fn id(&mut self) -> Result<ChunkId> {
        self.need(32)?;
        let mut id = [0u8; 32];
        self.buf.copy_to_slice(&mut id);
        Ok(ChunkId(id))
    }

    /// The next `n` bytes, without copying.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// A string field, its length bounded by [`MAX_STRING`] and the frame.
    pub fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return Err(WireError::Malformed(format!(
                "string of {n} bytes (at most {MAX_STRING})"
            )));
        }
        if n > self.buf.len() {
            return Err(WireError::Malformed("string overruns the frame".into()));
        }
        let s = self.buf.split_to(n);
        String::from_utf8(s.to_vec())
            .map_err(|_| WireError::Malformed("string is not UTF-8".into()))
    }

    /// Whatever is left.
    pub fn rest(self) -> Bytes {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_non_ascii_strings_round_trip() {
        // 300 bytes of two-byte characters: longer than a u8 length could say.
        let name = "é".repeat(150);
        let mut p = BytesMut::new();
        put_str(&mut p, &name);
        put_str(&mut p, "");
        let mut r = Payload::new(p.freeze());
        assert_eq!(r.str().unwrap(), name);
        assert_eq!(r.str().unwrap(), "");
        assert!(!r.has_remaining());
    }

    #[test]
    fn over_long_or_overrunning_strings_are_refused() {
        // A length beyond the limit is refused before anything is read.
        let mut p = BytesMut::new();
        p.put_u32(MAX_STRING as u32 + 1);
        p.put_slice(&vec![b'a'; MAX_STRING + 1]);
        let err = Payload::new(p.freeze()).str().unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        // A length beyond the frame.
        let mut p = BytesMut::new();
        p.put_u32(10);
        p.put_slice(b"abc");
        let err = Payload::new(p.freeze()).str().unwrap_err();
        assert!(err.to_string().contains("overruns"), "{err}");
        // Bytes that are not UTF-8.
        let mut p = BytesMut::new();
        p.put_u32(2);
        p.put_slice(&[0xc3, 0x28]);
        assert!(Payload::new(p.freeze()).str().is_err());
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary_and_names_checked() {
        let long = "ü".repeat(MAX_STRING);
        let mut p = BytesMut::new();
        put_message(&mut p, &long);
        let got = Payload::new(p.freeze()).str().unwrap();
        assert!(got.len() <= MAX_STRING && long.starts_with(&got));
        assert!(check_string("the VM name", &long).is_err());
        assert!(check_string("the VM name", &"é".repeat(150)).is_ok());
    }

    #[tokio::test]
    async fn envelopes_round_trip_and_oversized_ones_are_refused() {
        let mut buf = envelope(7, b"payload").to_vec();
        buf.extend_from_slice(&envelope(8, b""));
        let mut r = &buf[..];
        assert_eq!(
            read_envelope(&mut r).await.unwrap(),
            Some((7, Bytes::from_static(b"payload")))
        );
        assert_eq!(
            read_envelope(&mut r).await.unwrap(),
            Some((8, Bytes::new()))
        );
        assert!(read_envelope(&mut r).await.unwrap().is_none());
        let mut big = vec![1u8];
        big.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert!(matches!(
            read_envelope(&mut &big[..]).await,
            Err(WireError::TooLarge(_))
        ));
    }
}
