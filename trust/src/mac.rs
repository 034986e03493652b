//! The per-session key that authenticates control frames (chain HAVE,
//! acknowledgements and reports; multicast joins, NACKs and completion).
//!
//! The repository draws a random 32-byte secret per session; the control
//! key is derived from it, and the signed ticket carries only BLAKE3 of the
//! key (its commitment), so the ticket can travel in clear. A node obtains
//! the secret over a channel that authenticates it to the repository (the
//! chunk API, SigV4, over HTTPS) and checks it against the ticket. Each
//! control frame then carries a 32-byte keyed BLAKE3 tag over its bytes;
//! a frame whose tag does not verify is dropped and counted.

use crate::ticket::TicketError;

const CONTEXT: &str = "strato session control key v1";

#[derive(Clone)]
pub struct ControlKey([u8; 32]);

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("ControlKey(..)")
    }
}

impl ControlKey {
    /// A fresh random session secret and the key derived from it.
    pub fn generate() -> ([u8; 32], ControlKey) {
        let secret: [u8; 32] = rand::random();
        (secret, ControlKey::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8; 32]) -> ControlKey {
        ControlKey(blake3::derive_key(CONTEXT, secret))
    }

    /// What the ticket carries: BLAKE3 of the key.
    pub fn commitment(&self) -> [u8; 32] {
        *blake3::hash(&self.0).as_bytes()
    }

    /// Check a key obtained by the node against the signed commitment.
    pub fn check(&self, commitment: &[u8; 32]) -> Result<(), TicketError> {
        if blake3::hash(&self.0) == blake3::Hash::from_bytes(*commitment) {
            Ok(())
        } else {
            Err(TicketError::ControlKeyMismatch)
        }
    }

    /// The tag of one control frame (`context` separates frame kinds and
    /// directions, so a tag cannot be replayed as another kind of frame).
    pub fn tag(&self, context: &[u8], frame: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&(context.len() as u32).to_be_bytes());
        h.update(context);
        h.update(frame);
        *h.finalize().as_bytes()
    }

    /// Constant-time check of a frame's tag.
    pub fn verify(&self, context: &[u8], frame: &[u8], tag: &[u8; 32]) -> bool {
        blake3::Hash::from_bytes(self.tag(context, frame)) == blake3::Hash::from_bytes(*tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_with_the_same_key_context_and_bytes() {
        let (secret, key) = ControlKey::generate();
        let again = ControlKey::from_secret(&secret);
        assert!(again.check(&key.commitment()).is_ok());
        let (_, other) = ControlKey::generate();
        assert_eq!(
            other.check(&key.commitment()),
            Err(TicketError::ControlKeyMismatch)
        );
        let tag = key.tag(b"nack", b"round 3: pieces 1-9");
        assert!(again.verify(b"nack", b"round 3: pieces 1-9", &tag));
        assert!(!again.verify(b"join", b"round 3: pieces 1-9", &tag));
        assert!(!again.verify(b"nack", b"round 3: pieces 1-8", &tag));
        assert!(!other.verify(b"nack", b"round 3: pieces 1-9", &tag));
        assert_eq!(format!("{key:?}"), "ControlKey(..)");
    }
}
