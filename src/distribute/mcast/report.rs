//! What a session ends with: the sender's report (every receiver's outcome)
//! and a receiver's own report. Both print as JSON with `--json`.

use std::path::PathBuf;

use serde::Serialize;

use super::control::Progress;

#[derive(Debug, Clone, Serialize)]
pub struct SenderReport {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub session: String,
    pub group: String,
    pub payload: u32,
    /// Unique non-zero chunks and the datagram pieces they make.
    pub chunks: usize,
    pub pieces: u32,
    pub expected: usize,
    pub joined: usize,
    pub rounds: Vec<RoundStats>,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub elapsed_ms: u64,
    /// Receiver frames dropped in a signed session because their tag did
    /// not verify (or they were unsigned, or replayed).
    pub forged_control_frames: u64,
    pub receivers: Vec<ReceiverOutcome>,
}

impl SenderReport {
    /// Whether every expected receiver joined and completed.
    pub fn all_complete(&self) -> bool {
        self.joined >= self.expected
            && self
                .receivers
                .iter()
                .all(|r| r.outcome == Outcome::Complete)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundStats {
    pub round: u32,
    pub pieces: u64,
    pub bytes: u64,
    pub rate_bits: u64,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Complete,
    Evicted,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReceiverOutcome {
    pub addr: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// Chunks it held at join (never waited for).
    pub held_chunks: u64,
    /// First round it took part in (late joiners > 0).
    pub joined_round: u32,
    pub progress: Progress,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReceiverReport {
    pub sender: String,
    pub group: String,
    pub session: String,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub out: Option<PathBuf>,
    pub store: Option<PathBuf>,
    pub chunks: usize,
    pub held_chunks: u64,
    pub rounds: u32,
    pub progress: Progress,
    pub elapsed_ms: u64,
}
