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

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PROTOCOL: u32 = 1;

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
