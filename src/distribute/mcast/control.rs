//! The unicast control channel (TCP) between the sender and each receiver:
//! frames of a 4-byte big-endian length and a postcard-encoded message.
//!
//! ```text
//! receiver                     sender
//!   Hello ───────────────────▶
//!         ◀─────────────────── Session (manifest, group, payload size)
//!   Join (chunks held) ──────▶            (receiver is on the group now)
//!         ◀─────────────────── RoundEnd r  (after each multicast round)
//!   Nack r (missing pieces) ─▶  or  Done (every chunk verified, written)
//!         ◀─────────────────── Evicted (reason)  /  Final (the report)
//! ```
//!
//! # Signed sessions
//!
//! The sender's Session carries the repository's ticket (for this group,
//! this object and exactly these manifest entries) and the control secret
//! it commits to. A receiver with trust keys checks all of it before it
//! creates anything (see `receiver::check_trust`). From then on each of the
//! receiver's Join, Nack and Done travels as [`ToSender::Signed`]: its
//! postcard bytes, a sequence number and a keyed BLAKE3 tag bound to the
//! session id; the sender drops (and counts) anything else, or a tag that
//! does not verify, or a sequence number that does not increase.
//!
//! Threat model, as for the chain (`chain_broadcast::auth`): receivers hold
//! no secret of their own, so the control secret reaches them in the
//! Session, over plain TCP, and is as confidential as that link. Any host
//! that can open a control connection is handed it, like any receiver; so
//! the tags stop blind or off-path injection into a receiver's connection
//! and replays across sessions, not a rogue receiver with a connection of
//! its own (bounded by the sender's connection limit and the stalled-round
//! eviction). What a receiver writes never depends on the secret: it is
//! the signed manifest and the chunk ids. The sender's messages to the
//! receivers are not tagged; forging them can only stall or evict a
//! receiver, never change what it writes.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 2: the Session carries a ticket and control secret; Signed frames.
pub const PROTOCOL: u32 = 2;

/// Bounds what a peer can make us allocate; a NACK of every piece of a
/// multi-GiB image as runs still fits.
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, Serialize, Deserialize, Clone)]
pub enum ToSender {
    Hello {
        protocol: u32,
    },
    /// Unique chunk indices the receiver already holds, as (first, count).
    Join {
        held: Vec<(u32, u32)>,
    },
    /// Missing global pieces after `round`, as (first, count), with progress.
    Nack {
        round: u32,
        missing: Vec<(u32, u32)>,
        progress: Progress,
    },
    Done {
        progress: Progress,
    },
    /// In a signed session: a Join, Nack or Done as postcard bytes, the
    /// receiver's frame number (1, 2, ...) and the tag of [`to_sender_tag`].
    Signed {
        seq: u64,
        body: Vec<u8>,
        tag: [u8; 32],
    },
}

const TO_SENDER_CONTEXT: &[u8] = b"mcast to-sender v1";

fn tag_input(session: u32, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(12 + body.len());
    b.extend_from_slice(&session.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(body);
    b
}

/// The tag of a receiver's frame `seq` of `session`.
pub fn to_sender_tag(
    key: &strato_trust::ControlKey,
    session: u32,
    seq: u64,
    body: &[u8],
) -> [u8; 32] {
    key.tag(TO_SENDER_CONTEXT, &tag_input(session, seq, body))
}

/// Wraps `msg` as the receiver's frame `seq`.
pub fn sign_to_sender(
    key: &strato_trust::ControlKey,
    session: u32,
    seq: u64,
    msg: &ToSender,
) -> Result<ToSender, FrameError> {
    let body = postcard::to_stdvec(msg)?;
    let tag = to_sender_tag(key, session, seq, &body);
    Ok(ToSender::Signed { seq, body, tag })
}

/// The message inside a Signed frame whose tag verifies and whose number
/// is above `last`; `None` for anything else (a forgery, a replay, a
/// nested or unsigned frame).
pub fn open_to_sender(
    key: &strato_trust::ControlKey,
    session: u32,
    last: u64,
    frame: &ToSender,
) -> Option<(u64, ToSender)> {
    let ToSender::Signed { seq, body, tag } = frame else {
        return None;
    };
    if *seq <= last || !key.verify(TO_SENDER_CONTEXT, &tag_input(session, *seq, body), tag) {
        return None;
    }
    match postcard::from_bytes::<ToSender>(body) {
        Ok(m @ (ToSender::Join { .. } | ToSender::Nack { .. } | ToSender::Done { .. })) => {
            Some((*seq, m))
        }
        _ => None,
    }
}

#[derive(Debug, Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub pieces_have: u64,
    pub chunks_verified: u64,
    pub bytes_written: u64,
    pub datagrams: u64,
    /// Datagrams that were not ours (magic, version, session, bounds).
    pub foreign: u64,
    pub duplicates: u64,
    /// Chunks whose assembled bytes did not hash to their id (re-requested).
    pub verify_failures: u64,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct SessionInfo {
    pub protocol: u32,
    pub session: u32,
    pub group: String,
    pub payload: u32,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub profile: String,
    pub parts: u32,
    /// The manifest: (BLAKE3 id, length); the all-zero id is a zero run.
    pub entries: Vec<([u8; 32], u32)>,
    /// The repository's ticket (text form) for this session, if signed.
    pub ticket: Option<String>,
    /// The control secret the ticket commits to (see the module doc).
    pub control_secret: Option<[u8; 32]>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub enum ToReceiver {
    Session(Box<SessionInfo>),
    RoundEnd {
        round: u32,
    },
    Evicted {
        reason: String,
    },
    /// The sender's report as JSON (so it can grow without a protocol bump).
    Final {
        report: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The cause is in the message (not a `source`): error chains would
    /// print it twice.
    #[error("control connection: {0}")]
    Io(std::io::Error),
    #[error("control frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed control frame: {0}")]
    Decode(#[from] postcard::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Io(e)
    }
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// The next frame, or `None` at a clean end of stream.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncReadExt + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(postcard::from_bytes(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let msg = ToSender::Nack {
            round: 3,
            missing: vec![(1, 2), (10, 1)],
            progress: Progress::default(),
        };
        write_frame(&mut a, &msg).await.unwrap();
        drop(a);
        match read_frame::<_, ToSender>(&mut b).await.unwrap() {
            Some(ToSender::Nack { round, missing, .. }) => {
                assert_eq!(round, 3);
                assert_eq!(missing, vec![(1, 2), (10, 1)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(read_frame::<_, ToSender>(&mut b).await.unwrap().is_none());
    }

    #[test]
    fn signed_frames_open_only_with_the_key_session_and_a_new_number() {
        let (_, key) = strato_trust::ControlKey::generate();
        let (_, other) = strato_trust::ControlKey::generate();
        let msg = ToSender::Join { held: vec![(0, 3)] };
        let f = sign_to_sender(&key, 7, 1, &msg).unwrap();
        assert!(matches!(
            open_to_sender(&key, 7, 0, &f),
            Some((1, ToSender::Join { .. }))
        ));
        assert!(open_to_sender(&key, 7, 1, &f).is_none(), "replayed");
        assert!(open_to_sender(&key, 8, 0, &f).is_none(), "other session");
        assert!(open_to_sender(&other, 7, 0, &f).is_none(), "other key");
        assert!(open_to_sender(&key, 7, 0, &msg).is_none(), "unsigned");
        let ToSender::Signed { seq, mut body, tag } = f else {
            panic!("not signed")
        };
        body[0] ^= 1;
        let altered = ToSender::Signed { seq, body, tag };
        assert!(open_to_sender(&key, 7, 0, &altered).is_none(), "altered");
    }

    #[tokio::test]
    async fn oversized_frame_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, ToSender>(&mut b).await,
            Err(FrameError::TooLarge(_))
        ));
    }
}
