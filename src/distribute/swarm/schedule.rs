//! Which chunk to ask whom for: rarest first among the connected peers,
//! ties broken by distance from a random start, so nodes that start
//! together fetch different chunks first; the repository only for chunks
//! no connected peer holds; in the endgame (nothing left unrequested) a
//! chunk in flight may be asked of a second peer, so one slow peer cannot
//! hold the end back.
//!
//! Work is counted in *pieces*: the distinct non-zero chunk ids of the
//! manifest. A piece stands for every manifest index that names it; zero
//! runs are never pieces (never stored, never moved). Bitmaps on the wire
//! are over manifest indices.

use std::collections::HashMap;

use chunk_api::swarm::{bit, bitmap_len, set_bit};
use chunk_api::ManifestDoc;

use crate::store::ChunkId;

/// Most copies of one piece in flight at once (the endgame's duplicate).
const MAX_COPIES: u8 = 2;

#[derive(Debug, Clone)]
pub struct Piece {
    pub id: ChunkId,
    pub len: u32,
    /// Manifest indices naming this id, in order.
    pub indices: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Missing,
    InFlight(u8),
    Held,
}

/// Peers by a small id the agent hands out.
pub type PeerId = u64;

pub struct Scheduler {
    pieces: Vec<Piece>,
    /// Manifest index -> piece (None for zero runs).
    by_index: Vec<Option<u32>>,
    state: Vec<State>,
    /// Connected peers holding each piece.
    avail: Vec<u32>,
    peers: HashMap<PeerId, Vec<bool>>,
    start: usize,
    /// Where the repository requests go on from.
    cursor: usize,
    /// xorshift state for the jumps.
    rng: u64,
    missing: usize,
}

impl Scheduler {
    /// The pieces of `doc`; `held(id)` says which the node already has
    /// (an older version in its store).
    pub fn new(doc: &ManifestDoc, start_seed: u64, held: impl Fn(&ChunkId) -> bool) -> Scheduler {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut seen: HashMap<ChunkId, u32> = HashMap::new();
        let mut by_index = Vec::with_capacity(doc.chunks.len());
        for (i, c) in doc.chunks.iter().enumerate() {
            if c.id.is_zero_run() {
                by_index.push(None);
                continue;
            }
            let p = *seen.entry(c.id).or_insert_with(|| {
                pieces.push(Piece {
                    id: c.id,
                    len: c.len,
                    indices: Vec::new(),
                });
                (pieces.len() - 1) as u32
            });
            pieces[p as usize].indices.push(i as u32);
            by_index.push(Some(p));
        }
        let state: Vec<State> = pieces
            .iter()
            .map(|p| {
                if held(&p.id) {
                    State::Held
                } else {
                    State::Missing
                }
            })
            .collect();
        let missing = state.iter().filter(|s| **s != State::Held).count();
        let n = pieces.len();
        let start = if n == 0 {
            0
        } else {
            (start_seed % n as u64) as usize
        };
        Scheduler {
            avail: vec![0; n],
            pieces,
            by_index,
            state,
            peers: HashMap::new(),
            start,
            cursor: start,
            rng: start_seed | 1,
            missing,
        }
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    pub fn piece_at(&self, index: u32) -> Option<usize> {
        self.by_index
            .get(index as usize)
            .copied()
            .flatten()
            .map(|p| p as usize)
    }

    pub fn is_held(&self, p: usize) -> bool {
        self.state.get(p) == Some(&State::Held)
    }

    pub fn done(&self) -> bool {
        self.missing == 0
    }

    pub fn missing(&self) -> usize {
        self.missing
    }

    /// The node's own bitmap over manifest indices (zero runs count as held).
    pub fn bitmap(&self) -> Vec<u8> {
        let mut bits = vec![0u8; bitmap_len(self.by_index.len())];
        for (i, p) in self.by_index.iter().enumerate() {
            if p.is_none_or(|p| self.state[p as usize] == State::Held) {
                set_bit(&mut bits, i);
            }
        }
        bits
    }

    /// What a connected peer holds now (its bitmap over manifest indices;
    /// a short or missing bitmap holds nothing beyond its end).
    pub fn set_peer(&mut self, peer: PeerId, bitmap: &[u8]) {
        let has: Vec<bool> = self
            .pieces
            .iter()
            .map(|p| bit(bitmap, p.indices[0] as usize))
            .collect();
        self.remove_peer(peer);
        for (p, h) in has.iter().enumerate() {
            if *h {
                self.avail[p] += 1;
            }
        }
        self.peers.insert(peer, has);
    }

    /// The peer said it lacks piece `p` after all.
    pub fn peer_lacks(&mut self, peer: PeerId, p: usize) {
        if let Some(has) = self.peers.get_mut(&peer) {
            if has.get(p) == Some(&true) {
                has[p] = false;
                self.avail[p] -= 1;
            }
        }
    }

    pub fn remove_peer(&mut self, peer: PeerId) {
        if let Some(has) = self.peers.remove(&peer) {
            for (p, h) in has.iter().enumerate() {
                if *h {
                    self.avail[p] -= 1;
                }
            }
        }
    }

    fn distance(&self, p: usize) -> usize {
        let n = self.pieces.len();
        (p + n - self.start) % n
    }

    /// Up to `k` pieces to ask `peer` for, rarest first, marked in flight.
    /// `outstanding`: what this peer is already asked for (never twice).
    pub fn pick_for_peer(&mut self, peer: PeerId, k: usize, outstanding: &[usize]) -> Vec<usize> {
        let Some(has) = self.peers.get(&peer) else {
            return Vec::new();
        };
        let mut cand: Vec<usize> = (0..self.pieces.len())
            .filter(|&p| has[p] && self.state[p] == State::Missing)
            .collect();
        if cand.is_empty() && self.state.iter().all(|s| *s != State::Missing) {
            // Endgame: a second copy of what is in flight elsewhere.
            cand = (0..self.pieces.len())
                .filter(|&p| {
                    has[p]
                        && matches!(self.state[p], State::InFlight(c) if c < MAX_COPIES)
                        && !outstanding.contains(&p)
                })
                .collect();
        }
        cand.sort_by_key(|&p| (self.avail[p], self.distance(p)));
        cand.truncate(k);
        for &p in &cand {
            self.state[p] = match self.state[p] {
                State::InFlight(c) => State::InFlight(c + 1),
                _ => State::InFlight(1),
            };
        }
        cand
    }

    /// Whether the repository is the place to ask for `p`.
    fn for_repository(&self, p: usize) -> bool {
        self.state[p] == State::Missing && self.avail[p] == 0
    }

    /// Up to `k` pieces no connected peer holds, for the repository. They
    /// go on in order from the random start; when that run reaches what a
    /// peer holds (another node fetched from there), the next ones come
    /// from a random point in the middle of the longest run nobody holds,
    /// instead of racing that node along its own run.
    pub fn pick_for_repository(&mut self, k: usize) -> Vec<usize> {
        let n = self.pieces.len();
        let mut out = Vec::new();
        let mut jumps = 0;
        while out.len() < k && n > 0 && jumps < 2 {
            let mut p = self.cursor % n;
            // Our own requests in flight from the repository: go past them.
            let mut steps = 0;
            while steps < n && matches!(self.state[p], State::InFlight(_)) && self.avail[p] == 0 {
                p = (p + 1) % n;
                steps += 1;
            }
            if self.for_repository(p) {
                self.state[p] = State::InFlight(1);
                out.push(p);
                self.cursor = (p + 1) % n;
                continue;
            }
            let Some((first, len)) = self.longest_repository_run() else {
                break;
            };
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let half = (len / 2).max(1) as u64;
            self.cursor = (first + len / 4 + (self.rng % half) as usize) % n;
            jumps += 1;
        }
        out
    }

    /// The longest run of pieces (circular) for the repository: first, length.
    fn longest_repository_run(&self) -> Option<(usize, usize)> {
        let n = self.pieces.len();
        // Start the scan just after a piece that is not one, so no run is
        // cut in two at the scan's start; none at all: everything is one.
        let Some(edge) = (0..n).find(|&p| !self.for_repository(p)) else {
            return (n > 0).then_some((0, n));
        };
        let mut best: Option<(usize, usize)> = None;
        let mut run: Option<(usize, usize)> = None;
        for d in 1..=n {
            let p = (edge + d) % n;
            if self.for_repository(p) {
                let r = run.get_or_insert((p, 0));
                r.1 += 1;
            } else if let Some(r) = run.take() {
                if best.is_none_or(|b| r.1 > b.1) {
                    best = Some(r);
                }
            }
        }
        best
    }

    /// Piece `p` arrived, verified and stored. False if it already had
    /// (the endgame's other copy won).
    pub fn complete(&mut self, p: usize) -> bool {
        if self.state[p] == State::Held {
            return false;
        }
        self.state[p] = State::Held;
        self.missing -= 1;
        true
    }

    /// A request for `p` ended without the piece (peer gone, lied, lacked it).
    pub fn release(&mut self, p: usize) {
        self.state[p] = match self.state[p] {
            State::InFlight(c) if c > 1 => State::InFlight(c - 1),
            State::InFlight(_) => State::Missing,
            s => s,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strato_store::ManifestEntry;

    fn doc(n: usize) -> ManifestDoc {
        let mut entries: Vec<ManifestEntry> = (0..n)
            .map(|i| ManifestEntry {
                id: ChunkId::of(&i.to_le_bytes()),
                len: 10,
            })
            .collect();
        // A zero run and a repeated chunk.
        entries.push(ManifestEntry {
            id: ChunkId::ZERO_RUN,
            len: 10,
        });
        entries.push(entries[0]);
        let size = 10 * entries.len() as u64;
        ManifestDoc::new("b", "k", size, "e", "fixed:10", 0, &entries)
    }

    #[test]
    fn pieces_are_distinct_non_zero_ids_and_held_ones_are_never_asked_for() {
        let d = doc(4);
        let first = d.chunks[0].id;
        let s = Scheduler::new(&d, 0, |id| *id == first);
        assert_eq!(s.pieces().len(), 4);
        assert_eq!(s.pieces()[0].indices, vec![0, 5]);
        assert_eq!(s.missing(), 3);
        assert_eq!(s.piece_at(4), None);
        // Index 0, 4 (zero) and 5 (repeat of 0) are held.
        assert_eq!(s.bitmap(), vec![0b0011_0001]);
    }

    #[test]
    fn rarest_first_then_repository_for_what_no_peer_has_then_endgame() {
        let d = doc(4);
        let mut s = Scheduler::new(&d, 1, |_| false);
        // Peer 1 has pieces 0..3, peer 2 only piece 2: piece 2 is common.
        s.set_peer(1, &[0b0000_0111]);
        s.set_peer(2, &[0b0000_0100]);
        let got = s.pick_for_peer(1, 1, &[]);
        assert_eq!(got, vec![1], "rarest (one holder) nearest the start");
        // Piece 3: nobody has it, so the repository.
        assert_eq!(s.pick_for_repository(4), vec![3]);
        let rest = s.pick_for_peer(1, 4, &[1]);
        assert_eq!(rest, vec![0, 2]);
        // Nothing unrequested: peer 2 may double up on piece 2 only.
        assert_eq!(s.pick_for_peer(2, 4, &[]), vec![2]);
        assert!(s.complete(2));
        assert!(!s.complete(2), "the second copy is not counted");
        s.release(0);
        s.remove_peer(1);
        assert_eq!(s.pick_for_repository(4), vec![0]);
        for p in [0, 1, 3] {
            s.complete(p);
        }
        assert!(s.done());
    }

    #[test]
    fn a_repository_run_that_reaches_a_peers_chunks_jumps_into_the_longest_gap() {
        let d = doc(100);
        let mut s = Scheduler::new(&d, 5, |_| false);
        // Piece i is manifest index i; the peer holds pieces 10..20.
        let mut bits = vec![0u8; bitmap_len(102)];
        for i in 10..20 {
            set_bit(&mut bits, i);
        }
        s.set_peer(1, &bits);
        let got = s.pick_for_repository(6);
        assert_eq!(got[..5], [5, 6, 7, 8, 9]);
        // The longest run nobody holds is 20..100: its middle half.
        assert!((40..80).contains(&got[5]), "{got:?}");
    }

    #[test]
    fn random_starts_spread_the_first_repository_requests() {
        let d = doc(100);
        let a = Scheduler::new(&d, 10, |_| false).pick_for_repository(5);
        let b = Scheduler::new(&d, 60, |_| false).pick_for_repository(5);
        assert_eq!(a, vec![10, 11, 12, 13, 14]);
        assert_eq!(b, vec![60, 61, 62, 63, 64]);
    }
}
