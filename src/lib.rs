//! strato: content-addressed storage and VM image distribution for IaaS
//! clouds. See docs/DESIGN.md for the map of the parts.

pub mod config;
pub mod distribute;
pub mod image;
pub mod migrate;
pub mod qemu;
pub mod server;

/// The content-addressed store (its own crate, `store/`, at the bottom of the
/// stack); re-exported so the layers above name it `crate::store`.
pub use strato_store as store;

/// The chunk API's protocol and client (its own crate, `chunk-api/`, on top
/// of the store); the server's handlers and every client use it.
pub use chunk_api;

/// The repository's signing keys and distribution tickets (its own crate,
/// `trust/`); serve publishes the keys.
pub use strato_trust as trust;
