//! Pipelined broadcast-chain propagation over TCP (thesis §3.5.1, after
//! Kastafior/TakTuk): the sender streams an object once to node 1, which
//! verifies, stores and forwards each chunk to node 2 as it arrives, and so
//! on, so delivering to `n` nodes takes about `size / bandwidth` plus a small
//! per-hop delay instead of `n × size / bandwidth`.
//!
//! The crate knows nothing about S3 or strato's store: the sender reads
//! chunks through [`ChunkSource`], each node writes through a [`ChunkSink`]
//! made by a [`SinkFactory`]. [`FileSinkFactory`] writes plain files and
//! [`MemStore`] keeps chunks in memory.
//!
//! A propagation, hop by hop:
//! 1. HELLO carries the transfer id, object name, manifest and the rest of
//!    the chain. Each node connects to its successor before answering, so
//!    HAVE frames (what a node *and everything after it* holds) come back
//!    up the chain before any data flows; each hop then sends only chunks
//!    some node below it still needs.
//! 2. DATA frames flow down; every node checks BLAKE3(bytes) against the id
//!    before storing or forwarding. Bounded queues give backpressure from the
//!    slowest hop.
//! 3. END flows down; each node finishes its object (only if every chunk is
//!    present) and REPORT frames carry every node's result back up.
//!
//! A node that is down, or fails mid-stream, is bypassed: its predecessor
//! connects to the next node in the chain, redoes the HAVE exchange and
//! resends, from its own copy, what that node lacks. See [`frame`] for the
//! wire format.

mod codec;
mod error;
mod forward;
pub mod frame;
mod manifest;
mod options;
mod relay;
mod report;
mod sender;
mod sink;

pub use codec::{FrameReader, FrameWriter};
pub use error::{BoxError, Error, Result};
pub use frame::{Frame, FrameError, Hello, PROTOCOL_VERSION};
pub use manifest::{ChunkId, ChunkRef, Manifest, TransferInfo};
pub use options::{Options, Progress, ServeOptions};
pub use relay::{serve, Node};
pub use report::{NodeReport, Report};
pub use sender::{propagate, propagate_chains, split_chains};
pub use sink::{
    check_file_name, ChunkSink, ChunkSource, DiscardSinkFactory, FileSinkFactory, FileSource,
    MemStore, SinkFactory,
};
