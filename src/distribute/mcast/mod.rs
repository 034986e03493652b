//! Multicast image distribution with repair (Jump-Start §4, Fig. 4–5): the
//! sender streams an image's unique chunks once over IP multicast, paced
//! by a token bucket; receivers join over a TCP control channel, say which
//! chunks they already hold, and after each round report the pieces they
//! still miss. Repair rounds re-send only the union of what is missing.
//! A receiver accepts a chunk only once its bytes hash to the manifest id,
//! so lost, duplicated or forged datagrams never reach an image.
//!
//! - [`wire`]: the datagram header;  [`pacing`]: the token bucket;
//! - [`layout`]: chunk/piece numbering both ends derive from the manifest;
//! - [`control`]: the TCP messages;  [`socket`]: multicast socket setup;
//! - [`sender`] and [`receiver`]: the two ends;  [`report`]: their reports.

pub mod control;
pub mod layout;
pub mod pacing;
pub mod receiver;
pub mod report;
pub mod sender;
pub mod socket;
pub mod wire;

pub use receiver::{receive, RecvOptions, RecvSink};
pub use report::{Outcome, ReceiverOutcome, ReceiverReport, SenderReport};
pub use sender::{send, SendOptions, Source};

/// The digest a multicast session's ticket signs: over the manifest
/// entries exactly as the Session message carries them (zero runs as the
/// all-zero id).
pub fn manifest_digest(entries: &[crate::store::model::ManifestEntry]) -> [u8; 32] {
    strato_trust::manifest_digest(entries.iter().map(|e| (e.id.0, u64::from(e.len))))
}

#[derive(Debug, thiserror::Error)]
pub enum McastError {
    #[error(transparent)]
    Client(#[from] chunk_api::ClientError),
    #[error("image source: {0}")]
    Source(#[from] chunk_api::SourceError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Frame(#[from] control::FrameError),
    #[error(transparent)]
    Layout(#[from] layout::TooLarge),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("session refused: {0}")]
    Refused(String),
    #[error("evicted by the sender: {0}")]
    Evicted(String),
    #[error("the sender closed the control connection before the image was complete")]
    SenderGone,
    #[error("{0}")]
    Timeout(String),
    #[error("chunk {0} from the repository does not match its id")]
    Integrity(String),
    #[error("internal task failed: {0}")]
    Task(String),
}

impl McastError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> McastError {
        let what = what.into();
        move |source| McastError::Io { what, source }
    }
}
