//! The chunk API: how strato nodes ask each other for chunks and
//! manifests over HTTP, on the S3 port and with the S3 credentials.
//!
//! This crate is the protocol both ends speak: the wire types
//! ([`wire`]), the batch frames ([`frames`]), the hex id-per-line bodies
//! ([`ids`]) and the limits, the migration-group [`claims`] table, the
//! SigV4 [`client`] and [`ChunkSource`], the one way to ask for chunks. The server's
//! handlers live with the HTTP front door (`strato::server`); they parse
//! requests with this crate's types. It depends on `strato-store` only
//! (for chunk ids and manifest entries), so every layer above can use it.
//! See docs/DESIGN.md for where it sits.

mod batch;
pub mod claims;
pub mod client;
pub mod frames;
pub mod ids;
pub mod route;
pub mod source;
pub mod swarm;
pub mod wire;

pub use client::{parse_s3_url, ChunkClient, ClientError, Keys};
pub use route::{Route, RouteError};
pub use source::{ChunkSource, SourceError};
pub use wire::{
    ManifestChunk, ManifestCommit, ManifestDoc, ManifestError, MANIFEST_VERSION, MAX_CHUNK_LEN,
    MAX_ID_LIST_BODY, MAX_MANIFEST_BODY,
};
pub use wire::{
    NodeOutcome, SessionReport, TicketGrant, TicketRequest, DEFAULT_TICKET_SECS, MAX_REPORT_NODES,
    MAX_TICKET_SECS,
};
