//! The swarm tracker behind `POST /chunks/swarm/{bucket}/{key}`: who is in
//! the swarm of an object, what each member holds, and the swarm's session
//! secret. In memory and bounded: at most [`TrackerLimits::max_swarms`]
//! swarms of at most [`TrackerLimits::max_peers`] members; a member that has
//! not announced for `peer_ttl` is forgotten, a swarm nobody announced to
//! for `idle_swarm` is dropped. It never sees chunk data: nodes fetch
//! chunks from each other, or from the chunk API when no peer has them.
//!
//! A swarm is the object's current manifest: when the object is replaced,
//! the next announce starts a new swarm (new secret, no members), so peers
//! of two versions never mix bitmaps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::seq::SliceRandom;

use chunk_api::swarm::{
    decode_bitmap, Announce, AnnounceReply, PeerInfo, MAX_PEERS_RETURNED, SWARM_VERSION,
};
use chunk_api::ManifestDoc;

/// How big the tracker may grow and how fast it forgets.
#[derive(Debug, Clone)]
pub struct TrackerLimits {
    pub max_swarms: usize,
    pub max_peers: usize,
    pub peer_ttl: Duration,
    pub idle_swarm: Duration,
    /// Seconds between announces the tracker asks for.
    pub interval: Duration,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        TrackerLimits {
            max_swarms: 256,
            max_peers: 1024,
            peer_ttl: Duration::from_secs(15),
            idle_swarm: Duration::from_secs(600),
            interval: Duration::from_secs(2),
        }
    }
}

/// Why an announce is refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Full(String),
}

struct Member {
    have: Vec<u8>,
    done: bool,
    last: Instant,
    bytes_from_peers: u64,
    bytes_from_repository: u64,
}

struct Swarm {
    digest: [u8; 32],
    secret: [u8; 32],
    members: HashMap<String, Member>,
    /// Members that left or aged out, in their last state, for watchers
    /// (bounded like `members`; bitmaps dropped).
    departed: HashMap<String, Member>,
    last: Instant,
}

impl Swarm {
    fn depart(&mut self, peer: String, mut m: Member, max: usize) {
        if self.departed.len() < max || self.departed.contains_key(&peer) {
            m.have = Vec::new();
            self.departed.insert(peer, m);
        }
    }
}

#[derive(Default)]
pub struct Tracker {
    limits: TrackerLimits,
    swarms: Mutex<HashMap<(String, String), Swarm>>,
}

/// The announce's own fields, checked before the tracker is touched.
pub fn check_announce(a: &Announce) -> Result<(), TrackError> {
    if a.version != SWARM_VERSION {
        return Err(TrackError::Bad(format!(
            "swarm version {} is not one this tracker speaks ({SWARM_VERSION})",
            a.version
        )));
    }
    if a.watch {
        // A watcher is no member: its address and bitmap mean nothing.
        return Ok(());
    }
    let addr: SocketAddr = a
        .peer
        .parse()
        .map_err(|_| TrackError::Bad(format!("peer {:?} is not an IP:PORT address", a.peer)))?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(TrackError::Bad(format!(
            "peer {addr} is not an address other peers can connect to"
        )));
    }
    if a.manifest_digest.is_none() && !a.have.is_empty() {
        return Err(TrackError::Bad(
            "a bitmap needs the manifest digest it is over".into(),
        ));
    }
    Ok(())
}

impl Tracker {
    pub fn new(limits: TrackerLimits) -> Tracker {
        Tracker {
            limits,
            swarms: Mutex::new(HashMap::new()),
        }
    }

    /// Records `a` (checked with [`check_announce`]) in the swarm of `doc`,
    /// whose digest is `digest`, and answers with the other members.
    pub fn announce(
        &self,
        doc: &ManifestDoc,
        digest: [u8; 32],
        a: &Announce,
        now: Instant,
    ) -> Result<AnnounceReply, TrackError> {
        check_announce(a)?;
        let digest_hex = hex::encode(digest);
        let current = a.manifest_digest.as_deref() == Some(digest_hex.as_str());
        // A bitmap over the current manifest is checked before anything
        // changes; one over an older manifest means nothing here.
        let have = if current && !a.watch {
            decode_bitmap(&a.have, doc.chunks.len()).map_err(|e| TrackError::Bad(e.to_string()))?
        } else {
            Vec::new()
        };
        let l = &self.limits;
        let mut swarms = self.swarms.lock();
        swarms.retain(|_, s| now.saturating_duration_since(s.last) < l.idle_swarm);
        let id = (doc.bucket.clone(), doc.key.clone());
        let stale = swarms.get(&id).is_some_and(|s| s.digest != digest);
        if stale {
            swarms.remove(&id);
        }
        if !swarms.contains_key(&id) && swarms.len() >= l.max_swarms {
            return Err(TrackError::Full(format!(
                "the tracker runs {} swarms already; try again later",
                l.max_swarms
            )));
        }
        let swarm = swarms.entry(id).or_insert_with(|| Swarm {
            digest,
            secret: rand::random(),
            members: HashMap::new(),
            departed: HashMap::new(),
            last: now,
        });
        let aged: Vec<String> = swarm
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last) >= l.peer_ttl)
            .map(|(p, _)| p.clone())
            .collect();
        for p in aged {
            if let Some(m) = swarm.members.remove(&p) {
                swarm.depart(p, m, l.max_peers);
            }
        }
        if a.watch {
            return Ok(Self::watch_reply(swarm, digest_hex, current, doc, l));
        }
        if a.leaving {
            if let Some(mut m) = swarm.members.remove(&a.peer) {
                // The leave says whether the node ended complete; its
                // counters may be absent from it (kept from earlier).
                m.done = a.done;
                m.bytes_from_peers = m.bytes_from_peers.max(a.bytes_from_peers);
                m.bytes_from_repository = m.bytes_from_repository.max(a.bytes_from_repository);
                swarm.depart(a.peer.clone(), m, l.max_peers);
            }
        } else {
            if !swarm.members.contains_key(&a.peer) && swarm.members.len() >= l.max_peers {
                return Err(TrackError::Full(format!(
                    "the swarm of {}/{} has {} members already",
                    doc.bucket, doc.key, l.max_peers
                )));
            }
            swarm.members.insert(
                a.peer.clone(),
                Member {
                    have,
                    done: a.done,
                    last: now,
                    bytes_from_peers: a.bytes_from_peers,
                    bytes_from_repository: a.bytes_from_repository,
                },
            );
            // A member that rejoins is no longer departed.
            swarm.departed.remove(&a.peer);
        }
        swarm.last = now;
        let mut others: Vec<(&String, &Member)> = swarm
            .members
            .iter()
            .filter(|(p, _)| **p != a.peer)
            .collect();
        others.shuffle(&mut rand::thread_rng());
        others.truncate(MAX_PEERS_RETURNED);
        let peers = others
            .into_iter()
            .map(|(p, m)| PeerInfo {
                peer: p.clone(),
                have: hex::encode(&m.have),
                done: m.done,
                left: false,
                bytes_from_peers: 0,
                bytes_from_repository: 0,
            })
            .collect();
        Ok(AnnounceReply {
            version: SWARM_VERSION,
            manifest_digest: digest_hex,
            manifest: (!current).then(|| doc.clone()),
            secret: hex::encode(swarm.secret),
            peers,
            interval_secs: l.interval.as_secs().max(1),
            peer_ttl_secs: l.peer_ttl.as_secs().max(1),
        })
    }

    /// A watcher's answer: members first, then departed ones, with their
    /// state and bytes but no bitmaps.
    fn watch_reply(
        swarm: &Swarm,
        digest_hex: String,
        current: bool,
        doc: &ManifestDoc,
        l: &TrackerLimits,
    ) -> AnnounceReply {
        let info = |p: &String, m: &Member, left: bool| PeerInfo {
            peer: p.clone(),
            have: String::new(),
            done: m.done,
            left,
            bytes_from_peers: m.bytes_from_peers,
            bytes_from_repository: m.bytes_from_repository,
        };
        let peers = swarm
            .members
            .iter()
            .map(|(p, m)| info(p, m, false))
            .chain(swarm.departed.iter().map(|(p, m)| info(p, m, true)))
            .take(MAX_PEERS_RETURNED)
            .collect();
        AnnounceReply {
            version: SWARM_VERSION,
            manifest_digest: digest_hex,
            manifest: (!current).then(|| doc.clone()),
            secret: hex::encode(swarm.secret),
            peers,
            interval_secs: l.interval.as_secs().max(1),
            peer_ttl_secs: l.peer_ttl.as_secs().max(1),
        }
    }

    /// Swarms and members held now (for tests and metrics).
    pub fn size(&self) -> (usize, usize) {
        let s = self.swarms.lock();
        (s.len(), s.values().map(|s| s.members.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strato_store::{ChunkId, ManifestEntry};

    fn doc(key: &str, n: usize) -> (ManifestDoc, [u8; 32]) {
        let entries: Vec<ManifestEntry> = (0..n)
            .map(|i| ManifestEntry {
                id: ChunkId::of(&i.to_le_bytes()),
                len: 8,
            })
            .collect();
        let d = ManifestDoc::new("b", key, 8 * n as u64, "e", "fixed:8", 0, &entries);
        let digest = chunk_api::swarm::manifest_digest(&entries);
        (d, digest)
    }

    fn join(peer: &str) -> Announce {
        Announce {
            version: SWARM_VERSION,
            peer: peer.into(),
            ..Announce::default()
        }
    }

    #[test]
    fn members_see_each_other_and_age_out() {
        let t = Tracker::new(TrackerLimits::default());
        let (d, digest) = doc("k", 10);
        let now = Instant::now();
        let r1 = t.announce(&d, digest, &join("10.0.0.1:1"), now).unwrap();
        assert!(r1.manifest.is_some() && r1.peers.is_empty());
        let mut a2 = join("10.0.0.2:1");
        a2.manifest_digest = Some(r1.manifest_digest.clone());
        a2.have = "0102".into();
        let r2 = t.announce(&d, digest, &a2, now).unwrap();
        assert!(r2.manifest.is_none(), "the digest was current");
        assert_eq!(r2.secret, r1.secret);
        assert_eq!(r2.peers.len(), 1);
        let r1 = t
            .announce(
                &d,
                digest,
                &join("10.0.0.1:1"),
                now + Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(r1.peers[0].have, "0102");
        // 10.0.0.2 stops announcing: gone after the TTL.
        let r1 = t
            .announce(
                &d,
                digest,
                &join("10.0.0.1:1"),
                now + Duration::from_secs(16),
            )
            .unwrap();
        assert!(r1.peers.is_empty());
        assert_eq!(t.size(), (1, 1));
    }

    #[test]
    fn bad_announces_change_nothing() {
        let t = Tracker::new(TrackerLimits::default());
        let (d, digest) = doc("k", 10);
        let now = Instant::now();
        let good = hex::encode(digest);
        let cases = [
            Announce {
                version: 2,
                ..join("10.0.0.1:1")
            },
            join("not an address"),
            join("0.0.0.0:5"),
            join("10.0.0.1:0"),
            Announce {
                have: "00".into(),
                ..join("10.0.0.1:1")
            },
            Announce {
                manifest_digest: Some(good.clone()),
                have: "00".into(), // 10 entries need 2 bytes
                ..join("10.0.0.1:1")
            },
            Announce {
                manifest_digest: Some(good.clone()),
                have: "00".repeat(1000),
                ..join("10.0.0.1:1")
            },
            Announce {
                manifest_digest: Some(good),
                have: "zzzz".into(),
                ..join("10.0.0.1:1")
            },
        ];
        for a in cases {
            let e = t.announce(&d, digest, &a, now).unwrap_err();
            assert!(matches!(e, TrackError::Bad(_)), "{a:?}: {e}");
        }
        assert_eq!(t.size(), (0, 0));
    }

    #[test]
    fn bounded_in_swarms_and_members_and_a_new_version_is_a_new_swarm() {
        let t = Tracker::new(TrackerLimits {
            max_swarms: 2,
            max_peers: 2,
            ..TrackerLimits::default()
        });
        let now = Instant::now();
        let (a, da) = doc("a", 3);
        let (b, db) = doc("b", 3);
        let (c, dc) = doc("c", 3);
        let s1 = t.announce(&a, da, &join("10.0.0.1:1"), now).unwrap().secret;
        t.announce(&a, da, &join("10.0.0.2:1"), now).unwrap();
        let e = t.announce(&a, da, &join("10.0.0.3:1"), now).unwrap_err();
        assert!(matches!(e, TrackError::Full(_)), "{e}");
        t.announce(&b, db, &join("10.0.0.1:1"), now).unwrap();
        let e = t.announce(&c, dc, &join("10.0.0.1:1"), now).unwrap_err();
        assert!(matches!(e, TrackError::Full(_)), "{e}");
        // Object a replaced: a fresh swarm with a fresh secret.
        let (a2, da2) = doc("a", 4);
        let r = t.announce(&a2, da2, &join("10.0.0.1:1"), now).unwrap();
        assert_ne!(r.secret, s1);
        assert!(r.peers.is_empty());
        // Idle swarms go.
        t.announce(&c, dc, &join("10.0.0.1:1"), now + Duration::from_secs(601))
            .unwrap();
        assert_eq!(t.size(), (1, 1));
    }

    #[test]
    fn a_leaving_member_is_forgotten_at_once() {
        let t = Tracker::new(TrackerLimits::default());
        let (d, digest) = doc("k", 3);
        let now = Instant::now();
        t.announce(&d, digest, &join("10.0.0.1:1"), now).unwrap();
        t.announce(&d, digest, &join("10.0.0.2:1"), now).unwrap();
        let leave = Announce {
            leaving: true,
            ..join("10.0.0.2:1")
        };
        t.announce(&d, digest, &leave, now).unwrap();
        let r = t.announce(&d, digest, &join("10.0.0.1:1"), now).unwrap();
        assert!(r.peers.is_empty());
    }

    #[test]
    fn a_watcher_sees_members_and_departed_ones_and_is_no_member() {
        let t = Tracker::new(TrackerLimits::default());
        let (d, digest) = doc("k", 3);
        let now = Instant::now();
        t.announce(&d, digest, &join("10.0.0.1:1"), now).unwrap();
        t.announce(&d, digest, &join("10.0.0.2:1"), now).unwrap();
        t.announce(&d, digest, &join("10.0.0.3:1"), now).unwrap();
        let leave = Announce {
            leaving: true,
            done: true,
            bytes_from_peers: 7,
            ..join("10.0.0.2:1")
        };
        t.announce(&d, digest, &leave, now).unwrap();
        let watch = Announce {
            watch: true,
            ..join("")
        };
        // 10.0.0.3 ages out: departed, not done.
        let later = now + Duration::from_secs(16);
        t.announce(&d, digest, &join("10.0.0.1:1"), later).unwrap();
        let r = t.announce(&d, digest, &watch, later).unwrap();
        let mut seen: Vec<(String, bool, bool, u64)> = r
            .peers
            .iter()
            .map(|p| (p.peer.clone(), p.done, p.left, p.bytes_from_peers))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("10.0.0.1:1".into(), false, false, 0),
                ("10.0.0.2:1".into(), true, true, 7),
                ("10.0.0.3:1".into(), false, true, 0),
            ]
        );
        // The watcher is not listed to members.
        let r = t.announce(&d, digest, &join("10.0.0.1:1"), later).unwrap();
        assert!(r.peers.is_empty(), "{:?}", r.peers);
        assert_eq!(t.size(), (1, 1));
    }
}
