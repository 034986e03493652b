//! The multicast datagram: a fixed 16-byte header and a slice of one chunk.
//!
//! ```text
//! 0      2    3     4          8             12            16
//! | magic | ver | kind | session | chunk index | byte offset | payload...
//! ```
//! All integers big-endian. `kind` is [`DATA`] (payload = bytes of unique
//! chunk `index` from `offset`) or [`ROUND_END`] (no payload; `index` is the
//! round that just ended). Anything else on the group is foreign: the
//! receiver counts it and drops it. The header is not trusted for integrity
//! — chunk bytes are accepted only once the whole chunk hashes to its id.

/// "SM": strato multicast.
pub const MAGIC: u16 = 0x534d;
pub const VERSION: u8 = 1;
pub const HEADER: usize = 16;

pub const DATA: u8 = 0;
pub const ROUND_END: u8 = 1;

/// IPv4 (20) + UDP (8) + Ethernet (14) bytes around every datagram: what a
/// link (and a `tc` shaper) really carries, so the pacer counts them.
pub const LINK_OVERHEAD: usize = 42;

/// Largest UDP payload in one 1500-byte Ethernet frame.
pub const MTU_UDP_PAYLOAD: usize = 1500 - 28;

/// Default chunk bytes per datagram: a full 1500-byte frame.
pub const DEFAULT_PAYLOAD: usize = MTU_UDP_PAYLOAD - HEADER;

/// A decoded header (the payload follows it in the same buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub session: u32,
    pub index: u32,
    pub offset: u32,
}

impl Header {
    pub fn encode(&self, out: &mut [u8; HEADER]) {
        out[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        out[2] = VERSION;
        out[3] = self.kind;
        out[4..8].copy_from_slice(&self.session.to_be_bytes());
        out[8..12].copy_from_slice(&self.index.to_be_bytes());
        out[12..16].copy_from_slice(&self.offset.to_be_bytes());
    }

    /// The header of a datagram and its payload, or `None` for anything
    /// that is not a datagram of this protocol version.
    pub fn decode(buf: &[u8]) -> Option<(Header, &[u8])> {
        if buf.len() < HEADER
            || buf[0..2] != MAGIC.to_be_bytes()
            || buf[2] != VERSION
            || !matches!(buf[3], DATA | ROUND_END)
        {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let h = Header {
            kind: buf[3],
            session: u32_at(4),
            index: u32_at(8),
            offset: u32_at(12),
        };
        Some((h, &buf[HEADER..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let h = Header {
            kind: DATA,
            session: 0xdead_beef,
            index: 7,
            offset: 1456 * 3,
        };
        let mut buf = [0u8; HEADER];
        h.encode(&mut buf);
        let mut dgram = buf.to_vec();
        dgram.extend_from_slice(b"payload");
        let (back, payload) = Header::decode(&dgram).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, b"payload");
        assert!(Header::decode(&dgram[..HEADER - 1]).is_none());
        let mut bad = dgram.clone();
        bad[2] = VERSION + 1;
        assert!(Header::decode(&bad).is_none());
        let mut bad = dgram.clone();
        bad[3] = 9;
        assert!(Header::decode(&bad).is_none());
        let mut bad = dgram;
        bad[0] ^= 1;
        assert!(Header::decode(&bad).is_none());
    }
}
