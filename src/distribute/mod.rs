//! Getting images onto hypervisor nodes: the chunk API client and the
//! delta pull built on it (see DESIGN.md, "Who uses it").

mod batch;
pub mod chain;
pub mod client;
pub mod mcast;
pub mod pull;

pub use client::{ChunkClient, ClientError, Keys, RemoteManifest};
pub use pull::{pull, PullError, PullOptions, PullReport};
