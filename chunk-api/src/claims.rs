//! Shrinker's coordination service, held by the destination site's
//! `strato serve`: for a migration group, the first sender to claim a page
//! id wins and sends its bytes; every later claimant sends only the id.
//!
//! Memory is bounded (ids per group, number of groups) and idle groups
//! expire, so a forgotten migration cannot grow the table forever.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use strato_store::ChunkId;

/// Limits of a claim table.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    pub max_groups: usize,
    /// Ids held over all groups (about 80 bytes each).
    pub max_ids: usize,
    /// A group nobody claimed in for this long is dropped.
    pub idle: Duration,
}

impl Default for ClaimLimits {
    fn default() -> Self {
        ClaimLimits {
            max_groups: 1024,
            // 64 GiB of distinct 4 KiB pages; ~400 MiB of table.
            max_ids: 16 << 20,
            idle: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("invalid migration group name {0:?}: use 1-128 of A-Z a-z 0-9 . _ -")]
    BadGroup(String),
    #[error("claim table full ({0}); retry later or send the bytes")]
    Full(&'static str),
}

struct Group {
    ids: HashSet<ChunkId>,
    last_used: Instant,
}

/// Claims of all migration groups; cheap to share behind an `Arc`.
pub struct ClaimTable {
    limits: ClaimLimits,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    groups: HashMap<String, Group>,
    total: usize,
}

pub fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 128
        && g.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl Default for ClaimTable {
    fn default() -> Self {
        Self::new(ClaimLimits::default())
    }
}

impl ClaimTable {
    pub fn new(limits: ClaimLimits) -> ClaimTable {
        ClaimTable {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Claim `ids` for `group`; returns those this caller won (in order,
    /// without duplicates). Atomic: concurrent callers never both win an id.
    pub fn claim(&self, group: &str, ids: &[ChunkId]) -> Result<Vec<ChunkId>, ClaimError> {
        if !valid_group(group) {
            return Err(ClaimError::BadGroup(group.to_string()));
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.expire(now, self.limits.idle);
        if !inner.groups.contains_key(group) && inner.groups.len() >= self.limits.max_groups {
            return Err(ClaimError::Full("too many migration groups"));
        }
        // Refuse before changing anything, so a refused batch claims nothing.
        if inner.total + ids.len() > self.limits.max_ids {
            return Err(ClaimError::Full("too many claimed ids"));
        }
        let g = inner.groups.entry(group.to_string()).or_insert(Group {
            ids: HashSet::new(),
            last_used: now,
        });
        g.last_used = now;
        let mut won = Vec::new();
        for id in ids {
            if g.ids.insert(*id) {
                won.push(*id);
            }
        }
        inner.total += won.len();
        Ok(won)
    }

    pub fn groups(&self) -> usize {
        self.inner.lock().groups.len()
    }
}

impl Inner {
    fn expire(&mut self, now: Instant, idle: Duration) {
        let mut freed = 0;
        self.groups.retain(|_, g| {
            let keep = now.duration_since(g.last_used) < idle;
            if !keep {
                freed += g.ids.len();
            }
            keep
        });
        self.total -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ids(n: u32) -> Vec<ChunkId> {
        (0..n).map(|i| ChunkId::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn first_claimant_wins_per_group() {
        let t = ClaimTable::default();
        let a = ids(10);
        assert_eq!(t.claim("g1", &a[..6]).unwrap(), a[..6].to_vec());
        assert_eq!(t.claim("g1", &a).unwrap(), a[6..].to_vec());
        // Another group is independent.
        assert_eq!(t.claim("g2", &a[..2]).unwrap(), a[..2].to_vec());
        // Duplicates inside one batch are won once.
        assert_eq!(t.claim("g3", &[a[0], a[0]]).unwrap(), vec![a[0]]);
    }

    #[test]
    fn concurrent_claims_never_both_win() {
        let t = Arc::new(ClaimTable::default());
        let a = Arc::new(ids(20_000));
        let handles: Vec<_> = (0..4)
            .map(|k| {
                let (t, a) = (t.clone(), a.clone());
                std::thread::spawn(move || {
                    let mut won = 0;
                    for c in a.chunks(100 + k * 37) {
                        won += t.claim("g", c).unwrap().len();
                    }
                    won
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn bounded_and_expiring() {
        let t = ClaimTable::new(ClaimLimits {
            max_groups: 2,
            max_ids: 10,
            idle: Duration::from_millis(50),
        });
        let a = ids(11);
        assert!(matches!(t.claim("g", &a), Err(ClaimError::Full(_))));
        assert_eq!(t.claim("g", &a[..10]).unwrap().len(), 10);
        t.claim("h", &[]).unwrap();
        assert!(matches!(t.claim("i", &[]), Err(ClaimError::Full(_))));
        assert!(matches!(
            t.claim("bad/name", &[]),
            Err(ClaimError::BadGroup(_))
        ));
        std::thread::sleep(Duration::from_millis(80));
        // Both groups expired: room again, and g's ids can be won anew.
        assert_eq!(t.claim("i", &a[..10]).unwrap().len(), 10);
        assert_eq!(t.groups(), 1);
    }
}
