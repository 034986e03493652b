//! A FIFO-bounded map of pages by id. The sender keeps the pages it sent
//! by id, so the receiver can pull one the site turned out not to hold;
//! the receiver keeps the pages it received in full, so a later id-only
//! reference resolves without a round trip.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::store::ChunkId;

pub(crate) struct BoundedPages {
    map: HashMap<ChunkId, Bytes>,
    order: VecDeque<ChunkId>,
    cap: usize,
}

impl BoundedPages {
    /// An empty map of at most `cap` pages (0: keeps nothing).
    pub(crate) fn new(cap: usize) -> BoundedPages {
        BoundedPages {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Keep `page`, dropping the oldest pages past the cap (a page kept
    /// already stays where it is).
    pub(crate) fn insert(&mut self, id: ChunkId, page: Bytes) {
        if self.cap == 0 || self.map.contains_key(&id) {
            return;
        }
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(id, page);
        self.order.push_back(id);
    }

    pub(crate) fn get(&self, id: &ChunkId) -> Option<&Bytes> {
        self.map.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_pages_up_to_the_cap() {
        let ids: Vec<ChunkId> = (0u8..4).map(|i| ChunkId::of(&[i])).collect();
        let mut p = BoundedPages::new(2);
        for id in &ids {
            p.insert(*id, Bytes::from_static(b"x"));
        }
        assert!(p.get(&ids[0]).is_none() && p.get(&ids[1]).is_none());
        assert!(p.get(&ids[2]).is_some() && p.get(&ids[3]).is_some());
        let mut none = BoundedPages::new(0);
        none.insert(ids[0], Bytes::from_static(b"x"));
        assert!(none.get(&ids[0]).is_none());
    }
}
