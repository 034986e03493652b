//! Getting images onto hypervisor nodes: the chunk API client and the
//! delta pull built on it (see DESIGN.md, "Who uses it").

pub mod chain;
pub mod mcast;
pub mod pull;
pub mod swarm;

pub use pull::{pull, PullError, PullOptions, PullReport};

/// Where an image being received into `out` is written until it is whole
/// (a hidden sibling, renamed over `out` at the end), so a reader of `out`
/// never sees a partial image.
pub(crate) fn partial_path(out: &std::path::Path, what: &str) -> std::path::PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    out.with_file_name(format!(".{name}.strato-{what}"))
}

/// Who a distribution session is for, as the repository signs it.
pub use strato_trust::Audience;

/// Signs a session ticket for distributing `doc` (the object's manifest as
/// read from the store) to `audience`, valid `lifetime_secs` from now.
/// Returns the ticket and the session's control secret, which the ticket
/// commits to. The digest is over exactly the list the receivers are sent:
/// the chain manifest (zero runs cut into pieces) for chain nodes, the
/// store manifest for a multicast group. Used by the chunk API's ticket
/// route and by `propagate`/`mcast send` run on the repository itself.
pub fn sign_session(
    ring: &strato_trust::Keyring,
    doc: &chunk_api::ManifestDoc,
    audience: Audience,
    lifetime_secs: u64,
) -> (strato_trust::SignedTicket, [u8; 32]) {
    let entries = doc.entries();
    let digest = match &audience {
        Audience::Nodes(_) => {
            chain_broadcast::chain_manifest_digest(&chain::chain_manifest(&entries).0)
        }
        Audience::Group(_) => mcast::manifest_digest(&entries),
    };
    let (secret, control) = strato_trust::ControlKey::generate();
    let now = strato_trust::now_unix();
    let ticket = strato_trust::Ticket {
        session: rand::random(),
        issued_at: now,
        expires_at: now.saturating_add(lifetime_secs),
        bucket: doc.bucket.clone(),
        key: doc.key.clone(),
        size: doc.size,
        manifest_digest: digest,
        control_commitment: control.commitment(),
        audience,
    };
    (ticket.sign(ring), secret)
}

/// A granted ticket and control secret as the sender uses them; refuses a
/// secret the ticket does not commit to.
pub fn session_from_grant(
    grant: &chunk_api::TicketGrant,
) -> Result<chain_broadcast::SessionAuth, strato_trust::TicketError> {
    let ticket = strato_trust::SignedTicket::from_text(&grant.ticket)?;
    let secret: [u8; 32] = hex::decode(grant.control_secret.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(strato_trust::TicketError::Malformed(
            "control secret is not 32 hex bytes",
        ))?;
    chain_broadcast::SessionAuth::new(ticket, secret)
}
