//! Trust between the repository and the nodes it feeds.
//!
//! Nodes trust the repository's Ed25519 public key, not the network. The
//! repository signs a [`Ticket`] for each distribution session (chain or
//! multicast) naming the object, the BLAKE3 digest of its manifest, the
//! nodes or group it is for and an expiry. A node accepts a session only if
//! the ticket verifies under a key it trusts, is unexpired, names it, and
//! the manifest it is sent hashes to the signed digest; every chunk is then
//! checked against that manifest. A sender that is not the repository, a
//! replayed old session or a stale image version is refused before anything
//! is written.
//!
//! - [`keys`]: the repository's keyring (current key, retired keys still
//!   accepted until a time, kept 0600) and the public-key text form nodes
//!   are given (`ed25519:BASE64`);
//! - [`ticket`]: the ticket, its canonical encoding and its checks;
//! - [`mac`]: the per-session key that authenticates control frames.
//!
//! This crate knows nothing of chunks, HTTP or sockets: bytes in, verdicts
//! out, so every parser here is small and fuzzable.

pub mod keys;
pub mod limit;
pub mod mac;
pub mod ticket;

pub use keys::{Keyring, PublicKey, TrustedKeys};
pub use limit::{now_unix, LogLimiter};
pub use mac::ControlKey;
pub use ticket::{manifest_digest, Audience, SignedTicket, Ticket, TicketError};
