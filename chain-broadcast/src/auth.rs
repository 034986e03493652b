//! Signed sessions: a node started with trust keys accepts only a HELLO
//! that carries a ticket signed by the repository for this object, this
//! node and this manifest, and authenticates the control frames it sends
//! back (HAVE, REPORT) with the session's control key.
//!
//! # Threat model
//!
//! Who is trusted: the repository's signing key (the nodes are given its
//! public half), and whoever holds a valid ticket *and* its control secret:
//! the repository hands both, over the SigV4-authenticated chunk API, only
//! to a user who may read the object, and that sender is the repository's
//! delegate for that session. Nobody else is: any host that can reach a
//! node's port may open connections and send well-formed frames.
//!
//! What a node checks before it writes anything, in order: the ticket
//! parses, is signed by a trusted key, is inside its validity window, names
//! this node (the address it was reached at, or a name it was given:
//! never what the HELLO claims) and every node it is told to forward to;
//! the transfer name is the ticket's `BUCKET/KEY`; the manifest in HELLO
//! hashes to the signed digest and sums to the signed size; the control
//! secret matches the ticket's commitment. Then every chunk is checked
//! against the manifest, as in unsigned sessions. So a sender that is not
//! the repository's delegate, a ticket for another node, an expired
//! ticket replayed, or a ticket for one image used to push another (or the
//! same image under another name) is refused with an ERROR and nothing is
//! written. A replay of an unexpired ticket can only deliver the very image
//! the repository signed for that node, under its own name.
//!
//! How nodes learn the control key: the sender puts the secret in HELLO
//! next to the ticket, and each node forwards it to its successor. Nodes
//! hold no secret of their own, only the repository's public key, so there
//! is nothing to encrypt the secret to; the chain links are plain TCP, so
//! the secret is exactly as confidential as the links. What the tags give
//! therefore: a party that has not seen this session's HELLO (off-path,
//! blind injection, another session's traffic replayed) cannot make a HAVE
//! or REPORT that the upstream accepts; every tag is bound to the transfer
//! id, the node's address and the frame kind, so tags do not carry over
//! between sessions, nodes or kinds. What they do not give: an observer
//! on a link can read the secret and forge control frames of that session;
//! the worst it achieves is denial of service or a false success report
//! for a node, never a wrong image on a node (that rests on the signed
//! manifest and the chunk ids, which need no secret). Running the links
//! over a confidential channel closes that gap; so would delivering the
//! key to each node over the chunk API with the node's own credentials.

use std::net::SocketAddr;

use bytes::Bytes;
use strato_trust::{manifest_digest, ControlKey, SignedTicket, TicketError, TrustedKeys};

use crate::error::{Error, Result};
use crate::frame::{encode, Frame, Hello, HelloSession};
use crate::manifest::Manifest;

/// What the sender of a signed session holds, from the repository.
#[derive(Clone)]
pub struct SessionAuth {
    ticket: SignedTicket,
    secret: [u8; 32],
    key: ControlKey,
}

impl SessionAuth {
    /// Pairs a ticket with its control secret; refuses a secret the ticket
    /// does not commit to.
    pub fn new(ticket: SignedTicket, secret: [u8; 32]) -> std::result::Result<Self, TicketError> {
        let key = ControlKey::from_secret(&secret);
        key.check(&ticket.ticket.control_commitment)?;
        Ok(SessionAuth {
            ticket,
            secret,
            key,
        })
    }

    /// The ticket.
    pub fn ticket(&self) -> &SignedTicket {
        &self.ticket
    }

    /// The control secret, for a session start that carries it.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The control key derived from it.
    pub fn control_key(&self) -> &ControlKey {
        &self.key
    }

    pub(crate) fn hello_session(&self) -> HelloSession {
        HelloSession {
            ticket: Bytes::copy_from_slice(self.ticket.as_bytes()),
            secret: self.secret,
        }
    }

    /// The tag of a control frame `node` sends in transfer `transfer_id`.
    pub(crate) fn tag(&self, transfer_id: u64, node: SocketAddr, frame: &Frame) -> [u8; 32] {
        let (ctx, bytes) = tag_input(transfer_id, node, frame);
        self.key.tag(ctx, &bytes)
    }

    pub(crate) fn verify(
        &self,
        transfer_id: u64,
        node: SocketAddr,
        frame: &Frame,
        tag: &[u8; 32],
    ) -> bool {
        let (ctx, bytes) = tag_input(transfer_id, node, frame);
        self.key.verify(ctx, &bytes, tag)
    }
}

impl std::fmt::Debug for SessionAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("SessionAuth")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

fn tag_input(transfer_id: u64, node: SocketAddr, frame: &Frame) -> (&'static [u8], Vec<u8>) {
    let ctx: &'static [u8] = match frame {
        Frame::Have(_) => b"chain HAVE v1",
        Frame::Report(_) => b"chain REPORT v1",
        _ => b"chain other v1",
    };
    let node = node.to_string();
    let enc = encode(frame);
    let mut b = Vec::with_capacity(10 + node.len() + enc.len());
    b.extend_from_slice(&transfer_id.to_be_bytes());
    b.extend_from_slice(&(node.len() as u16).to_be_bytes());
    b.extend_from_slice(node.as_bytes());
    b.extend_from_slice(&enc);
    (ctx, b)
}

/// What a node accepts sessions under.
#[derive(Clone, Debug)]
pub struct NodeTrust {
    /// The repository keys tickets must be signed with.
    pub keys: TrustedKeys,
    /// Names this node answers to in tickets (`HOST:PORT`), besides the
    /// address each connection reached it at.
    pub names: Vec<String>,
}

/// The digest of a chain manifest, as the repository signs it.
pub fn chain_manifest_digest(m: &Manifest) -> [u8; 32] {
    manifest_digest(m.chunks.iter().map(|c| (c.id.0, u64::from(c.len))))
}

fn refused(why: impl std::fmt::Display) -> Error {
    Error::Refused(why.to_string())
}

/// The checks of the module doc, on a HELLO that reached this node at
/// `local`, at unix time `now`.
pub(crate) fn check_hello(
    trust: &NodeTrust,
    local: SocketAddr,
    hello: &Hello,
    now: u64,
) -> Result<SessionAuth> {
    let Some(sess) = &hello.session else {
        return Err(refused(
            "unsigned session: this node accepts only sessions with a ticket signed by the repository",
        ));
    };
    let st = SignedTicket::parse(&sess.ticket).map_err(refused)?;
    let local = local.to_string();
    // The audience check uses the address this connection reached, or a
    // configured name; the HELLO's own claim of who we are is not evidence.
    let mut me = Err(refused("no identity"));
    for name in std::iter::once(&local).chain(trust.names.iter()) {
        me = st.verify(&trust.keys, now, name).map_err(refused);
        if me.is_ok() {
            break;
        }
    }
    let t = me?.clone();
    let named = |a: &SocketAddr| matches!(&t.audience, strato_trust::Audience::Nodes(n) if n.iter().any(|x| *x == a.to_string()));
    if let Some(stranger) = hello.chain.iter().skip(1).find(|a| !named(a)) {
        return Err(refused(format!(
            "the chain names {stranger}, which the session ticket does not"
        )));
    }
    let want = format!("{}/{}", t.bucket, t.key);
    if hello.name != want {
        return Err(refused(format!(
            "transfer {:?} but the session ticket is for {want:?}",
            hello.name
        )));
    }
    st.check_manifest(&chain_manifest_digest(&hello.manifest))
        .map_err(refused)?;
    if hello.manifest.size() != t.size {
        return Err(refused(format!(
            "manifest of {} bytes, the session ticket says {}",
            hello.manifest.size(),
            t.size
        )));
    }
    SessionAuth::new(st, sess.secret).map_err(refused)
}
