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
//! wire format, and [`auth`] for signed sessions (a ticket from the
//! repository in HELLO, tagged control frames).
//!
//! # Example
//!
//! Two nodes in this process, fed from an in-memory repository:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::sync::Arc;
//! use chain_broadcast::{propagate, ChunkSource, Manifest, MemStore, Node, Options, ServeOptions};
//!
//! let data = bytes::Bytes::from(vec![7u8; 1 << 20]);
//! let (manifest, parts) = Manifest::from_fixed_chunks(&data, 64 << 10);
//! let repo = MemStore::new();
//! for (c, p) in manifest.chunks.iter().zip(parts) {
//!     repo.insert(c.id, p);
//! }
//! let (a, b) = (MemStore::new(), MemStore::new());
//! let na = Node::spawn("127.0.0.1:0".parse()?, a.factory(), ServeOptions::default()).await?;
//! let nb = Node::spawn("127.0.0.1:0".parse()?, b.factory(), ServeOptions::default()).await?;
//!
//! let source: Arc<dyn ChunkSource> = repo;
//! let nodes = [na.addr(), nb.addr()];
//! let report = propagate(source, "disk.img", Arc::new(manifest), &nodes, &Options::default()).await?;
//! assert!(report.all_ok());
//! assert_eq!(b.object("disk.img").as_deref(), Some(&data[..]));
//! // All 16 chunks are identical: the repository sent one.
//! assert_eq!(report.bytes_sent, 64 << 10);
//! # Ok(())
//! # }
//! ```
//!
//! A real node runs [`serve`] with a [`SinkFactory`] over its store; the
//! repository calls [`propagate`] with a [`ChunkSource`] over its store.

pub mod auth;
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

pub use auth::{chain_manifest_digest, NodeTrust, SessionAuth};
pub use codec::{FrameReader, FrameWriter};
pub use error::{BoxError, Error, Result};
pub use frame::{Frame, FrameError, Hello, HelloSession, PROTOCOL_VERSION};
pub use manifest::{ChunkId, ChunkRef, Manifest, TransferInfo};
pub use options::{Options, Progress, ServeOptions};
pub use relay::{serve, serve_until, Node};
pub use report::{NodeReport, Report};
pub use sender::{propagate, propagate_chains, resolve_nodes, split_chains};
pub use sink::{
    check_file_name, ChunkSink, ChunkSource, DiscardSinkFactory, FileSinkFactory, FileSource,
    MemStore, SinkFactory,
};
