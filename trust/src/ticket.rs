//! Session tickets: what the repository signs for one distribution session.
//!
//! Canonical encoding (all integers big-endian), signed as a whole:
//!
//! ```text
//! "STKT" version:u8 key-id:[8] session:[16] issued:u64 expires:u64
//! size:u64 manifest-digest:[32] control-commitment:[32]
//! bucket:(u16 len + UTF-8) key:(u16 len + UTF-8)
//! audience-kind:u8 (0 nodes, 1 group) count:u16 (u16 len + UTF-8)*count
//! signature:[64]   Ed25519 over every byte before it
//! ```
//!
//! Text form (CLI flags, HTTP bodies, chain HELLO): unpadded base64url of
//! those bytes. A node checks, in order: the encoding, a trusted key with
//! the ticket's key id, the signature, the validity window, that it is in
//! the audience; then, when the manifest arrives, that it hashes to the
//! signed digest ([`manifest_digest`]).

use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier};

use crate::keys::{Keyring, TrustedKeys};

const MAGIC: &[u8; 4] = b"STKT";
pub const VERSION: u8 = 1;
/// Longest bucket or key name, audience entry and audience list accepted.
const MAX_NAME: usize = 1024;
const MAX_AUDIENCE: usize = 4096;
/// Clock difference between repository and node that is tolerated.
pub const CLOCK_SKEW_SECS: u64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("malformed session ticket: {0}")]
    Malformed(&'static str),
    #[error("session ticket of version {0} (this node reads {VERSION})")]
    Version(u8),
    #[error("session ticket signed by key {0}, which this node does not trust")]
    UnknownKey(String),
    #[error("session ticket signature does not verify: not issued by the repository, or altered")]
    BadSignature,
    #[error("session ticket expired {0} s ago")]
    Expired(u64),
    #[error("session ticket not valid yet (issued {0} s in the future)")]
    NotYetValid(u64),
    #[error("session ticket is for {audience}, not for {me}")]
    NotForMe { me: String, audience: String },
    #[error("manifest does not match the signed session ticket (a different or stale image)")]
    ManifestMismatch,
    #[error("control key does not match the signed session ticket")]
    ControlKeyMismatch,
}

/// Who a session is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Chain nodes, as `HOST:PORT` strings (what `propagate --nodes` names).
    Nodes(Vec<String>),
    /// A multicast group, `ADDR:PORT`.
    Group(String),
}

impl Audience {
    fn contains(&self, me: &str) -> bool {
        match self {
            Audience::Nodes(n) => n.iter().any(|x| x == me),
            Audience::Group(g) => g == me,
        }
    }

    fn describe(&self) -> String {
        match self {
            Audience::Nodes(n) if n.len() <= 4 => format!("nodes {}", n.join(",")),
            Audience::Nodes(n) => format!("{} nodes ({}, ...)", n.len(), n[..4].join(",")),
            Audience::Group(g) => format!("group {g}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub session: [u8; 16],
    pub issued_at: u64,
    pub expires_at: u64,
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub manifest_digest: [u8; 32],
    /// BLAKE3 of the session's control key (see `mac`): a node that
    /// obtained the key checks it against the signed ticket.
    pub control_commitment: [u8; 32],
    pub audience: Audience,
}

/// A ticket with its signature, as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTicket {
    pub ticket: Ticket,
    pub key_id: [u8; 8],
    bytes: Vec<u8>,
}

/// BLAKE3 digest of a manifest: the ordered (chunk id, length) list the
/// receiver is sent. Both ends must feed it the same list.
pub fn manifest_digest<I: IntoIterator<Item = ([u8; 32], u64)>>(entries: I) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("strato manifest digest v1");
    let mut count = 0u64;
    for (id, len) in entries {
        h.update(&id);
        h.update(&len.to_be_bytes());
        count += 1;
    }
    h.update(&count.to_be_bytes());
    *h.finalize().as_bytes()
}

impl Ticket {
    /// Sign with the keyring's current key.
    pub fn sign(&self, ring: &Keyring) -> SignedTicket {
        let mut body = self.encode_body(ring.public().id());
        let (key_id, sig) = ring.sign(&body);
        body.extend_from_slice(&sig);
        SignedTicket {
            ticket: self.clone(),
            key_id,
            bytes: body,
        }
    }

    fn encode_body(&self, key_id: [u8; 8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&key_id);
        b.extend_from_slice(&self.session);
        b.extend_from_slice(&self.issued_at.to_be_bytes());
        b.extend_from_slice(&self.expires_at.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&self.manifest_digest);
        b.extend_from_slice(&self.control_commitment);
        put_str(&mut b, &self.bucket);
        put_str(&mut b, &self.key);
        let (kind, list): (u8, Vec<&str>) = match &self.audience {
            Audience::Nodes(n) => (0, n.iter().map(String::as_str).collect()),
            Audience::Group(g) => (1, vec![g.as_str()]),
        };
        b.push(kind);
        b.extend_from_slice(&(list.len().min(u16::MAX as usize) as u16).to_be_bytes());
        for s in list.iter().take(u16::MAX as usize) {
            put_str(&mut b, s);
        }
        b
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s);
}

/// A bounds-checked reader over the ticket bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TicketError> {
        if self.0.len() < n {
            return Err(TicketError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, TicketError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    fn u16(&mut self) -> Result<u16, TicketError> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    fn string(&mut self) -> Result<String, TicketError> {
        let n = self.u16()? as usize;
        if n > MAX_NAME {
            return Err(TicketError::Malformed("name too long"));
        }
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| TicketError::Malformed("name not UTF-8"))
    }
}

impl SignedTicket {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn to_text(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.bytes)
    }

    pub fn from_text(text: &str) -> Result<SignedTicket, TicketError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| TicketError::Malformed("not base64url"))?;
        SignedTicket::parse(&bytes)
    }

    /// Decode without checking the signature (see [`SignedTicket::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<SignedTicket, TicketError> {
        if bytes.len() > 64 + 8 * 1024 + MAX_AUDIENCE * (2 + 64) {
            return Err(TicketError::Malformed("too long"));
        }
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(TicketError::Malformed("bad magic"));
        }
        let version = r.arr::<1>()?[0];
        if version != VERSION {
            return Err(TicketError::Version(version));
        }
        let key_id = r.arr()?;
        let session = r.arr()?;
        let issued_at = r.u64()?;
        let expires_at = r.u64()?;
        let size = r.u64()?;
        let manifest_digest = r.arr()?;
        let control_commitment = r.arr()?;
        let bucket = r.string()?;
        let key = r.string()?;
        let kind = r.arr::<1>()?[0];
        let count = r.u16()? as usize;
        if count > MAX_AUDIENCE {
            return Err(TicketError::Malformed("audience too long"));
        }
        let mut list = Vec::with_capacity(count);
        for _ in 0..count {
            list.push(r.string()?);
        }
        let audience = match (kind, list.len()) {
            (0, _) => Audience::Nodes(list),
            (1, 1) => Audience::Group(list.remove(0)),
            _ => return Err(TicketError::Malformed("bad audience")),
        };
        r.take(64)?;
        if !r.0.is_empty() {
            return Err(TicketError::Malformed("trailing bytes"));
        }
        Ok(SignedTicket {
            ticket: Ticket {
                session,
                issued_at,
                expires_at,
                bucket,
                key,
                size,
                manifest_digest,
                control_commitment,
                audience,
            },
            key_id,
            bytes: bytes.to_vec(),
        })
    }

    /// The checks a node makes before accepting a session: signed by a
    /// trusted key, inside its validity window at `now` (unix seconds), and
    /// addressed to `me`.
    pub fn verify(
        &self,
        trusted: &TrustedKeys,
        now: u64,
        me: &str,
    ) -> Result<&Ticket, TicketError> {
        let key = trusted
            .by_id(&self.key_id)
            .ok_or_else(|| TicketError::UnknownKey(hex::encode(self.key_id)))?;
        let (body, sig) = self.bytes.split_at(self.bytes.len() - 64);
        let sig = Signature::from_slice(sig).map_err(|_| TicketError::BadSignature)?;
        key.0
            .verify(body, &sig)
            .map_err(|_| TicketError::BadSignature)?;
        let t = &self.ticket;
        if now > t.expires_at {
            return Err(TicketError::Expired(now - t.expires_at));
        }
        if t.issued_at > now + CLOCK_SKEW_SECS {
            return Err(TicketError::NotYetValid(t.issued_at - now));
        }
        if !t.audience.contains(me) {
            return Err(TicketError::NotForMe {
                me: me.to_string(),
                audience: t.audience.describe(),
            });
        }
        Ok(t)
    }

    /// The manifest a sender delivered must be the one the repository signed.
    pub fn check_manifest(&self, digest: &[u8; 32]) -> Result<(), TicketError> {
        if &self.ticket.manifest_digest == digest {
            Ok(())
        } else {
            Err(TicketError::ManifestMismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;

    fn ticket(audience: Audience) -> Ticket {
        Ticket {
            session: [7; 16],
            issued_at: 1000,
            expires_at: 2000,
            bucket: "images".into(),
            key: "debian-12.qcow2".into(),
            size: 1 << 30,
            manifest_digest: manifest_digest([([1; 32], 4096), ([2; 32], 100)]),
            control_commitment: [9; 32],
            audience,
        }
    }

    fn new_ring() -> (tempfile::TempDir, Keyring) {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = Keyring::open_or_create(dir.path()).unwrap();
        (dir, ring)
    }

    #[test]
    fn a_signed_ticket_verifies_for_its_nodes_only_and_in_its_window() {
        let (_d, ring) = new_ring();
        let trusted = TrustedKeys::new(vec![ring.public()]).unwrap();
        let st = ticket(Audience::Nodes(vec![
            "10.0.0.2:7400".into(),
            "10.0.0.3:7400".into(),
        ]))
        .sign(&ring);
        let back = SignedTicket::from_text(&st.to_text()).unwrap();
        assert_eq!(back, st);
        assert!(back.verify(&trusted, 1500, "10.0.0.3:7400").is_ok());
        assert!(matches!(
            back.verify(&trusted, 1500, "10.0.0.9:7400"),
            Err(TicketError::NotForMe { .. })
        ));
        assert_eq!(
            back.verify(&trusted, 2100, "10.0.0.2:7400"),
            Err(TicketError::Expired(100))
        );
        assert_eq!(
            back.verify(&trusted, 800, "10.0.0.2:7400"),
            Err(TicketError::NotYetValid(200))
        );
        assert!(back.check_manifest(&st.ticket.manifest_digest).is_ok());
        let other = manifest_digest([([1; 32], 4096)]);
        assert_eq!(
            back.check_manifest(&other),
            Err(TicketError::ManifestMismatch)
        );
    }

    #[test]
    fn another_key_a_flipped_bit_or_garbage_is_refused() {
        let (_d1, ring) = new_ring();
        let (_d2, stranger) = new_ring();
        let trusted = TrustedKeys::new(vec![ring.public()]).unwrap();
        let forged = ticket(Audience::Group("239.1.1.1:7500".into())).sign(&stranger);
        assert!(matches!(
            forged.verify(&trusted, 1500, "239.1.1.1:7500"),
            Err(TicketError::UnknownKey(_))
        ));
        // The stranger claims the repository's key id: the signature fails.
        let mut bytes = forged.as_bytes().to_vec();
        bytes[5..13].copy_from_slice(&ring.public().id());
        let claimed = SignedTicket::parse(&bytes).unwrap();
        assert_eq!(
            claimed.verify(&trusted, 1500, "239.1.1.1:7500"),
            Err(TicketError::BadSignature)
        );
        // Any altered byte of an honest ticket breaks it.
        let honest = ticket(Audience::Group("239.1.1.1:7500".into())).sign(&ring);
        for i in (13..honest.as_bytes().len()).step_by(7) {
            let mut b = honest.as_bytes().to_vec();
            b[i] ^= 1;
            if let Ok(t) = SignedTicket::parse(&b) {
                assert!(
                    t.verify(&trusted, 1500, "239.1.1.1:7500").is_err(),
                    "byte {i}"
                );
            }
        }
        for bad in ["", "AAAA", "!!", "U1RLVA"] {
            assert!(SignedTicket::from_text(bad).is_err(), "{bad:?}");
        }
        let _ = PublicKey::parse(&ring.public().to_text()).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = SignedTicket::parse(&bytes);
        }
    }
}
