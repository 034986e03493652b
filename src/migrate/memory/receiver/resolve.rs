//! Pages a batch names by id: from this receiver's own pages, the
//! destination site (batched), the site again for a bounded time, and
//! finally pulled from the sender. Every page is checked against its id;
//! one nobody can produce fails the migration.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Shared, Slot};
use crate::migrate::error::{AgentError, Result, Unit};
use crate::migrate::memory::wire::{self, Frame};
use crate::qemu::stream::PAGE_SIZE;
use crate::store::ChunkId;

/// Find every page a batch names by id, keep the order: one batched
/// request to the site for all of them, then the slow path (wait, pull)
/// for whatever is still missing, concurrently.
pub(super) async fn resolve(shared: Arc<Shared>, prepared: Vec<Slot>) -> Result<Vec<Bytes>> {
    let mut found: HashMap<ChunkId, Bytes> = HashMap::new();
    let mut missing = Vec::new();
    {
        let local = shared.local.lock();
        for slot in &prepared {
            if let Slot::Wanted(id) = slot {
                if found.contains_key(id) {
                    continue;
                }
                match local.get(id) {
                    Some(p) => {
                        found.insert(*id, p.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
    }
    missing.sort_unstable();
    missing.dedup();
    if let (Some(site), false) = (&shared.opts.site, missing.is_empty()) {
        let got = {
            let _slot = shared
                .site_slots
                .acquire()
                .await
                .map_err(|_| AgentError::Internal("site slots closed".into()))?;
            site.get_many(&missing).await
        };
        match got {
            // get_many checked every page against its id.
            Ok(map) => found.extend(map.into_iter().filter(|(_, p)| p.len() == PAGE_SIZE)),
            Err(e) => tracing::warn!("batched site lookup failed ({e}); asking page by page"),
        }
    }
    let from_site: HashSet<ChunkId> = found
        .keys()
        .filter(|id| missing.binary_search(id).is_ok())
        .copied()
        .collect();
    // The slow path, for the whole batch at once: what neither this
    // receiver nor the site holds yet (a page another sender of the group
    // claimed and has not stored yet, or one whose claimant died).
    let mut still: Vec<ChunkId> = missing
        .iter()
        .filter(|id| !found.contains_key(id))
        .copied()
        .collect();
    let mut slow: HashMap<ChunkId, Source> = HashMap::new();
    if !still.is_empty() {
        wait_at_site(&shared, &mut still, &mut found, &mut slow).await;
    }
    if !still.is_empty() {
        for (id, page) in pull_pages(&shared, still).await? {
            found.insert(id, page);
            slow.insert(id, Source::Pulled);
        }
    }
    // Each id is counted once by where it came from; repeats within the
    // batch count as local.
    let mut counted: HashSet<ChunkId> = HashSet::new();
    let c = &shared.counters;
    prepared
        .into_iter()
        .map(|slot| match slot {
            Slot::Ready(b) => Ok(b),
            Slot::Wanted(id) => {
                let page = found
                    .get(&id)
                    .cloned()
                    .ok_or(AgentError::Unknown(Unit::Page, id))?;
                let first = counted.insert(id);
                let counter = match (first, slow.get(&id)) {
                    (true, Some(Source::Pulled)) => &c.pulled,
                    (true, Some(Source::Site)) => {
                        c.waited.fetch_add(1, Ordering::Relaxed);
                        &c.site
                    }
                    (true, None) if from_site.contains(&id) => &c.site,
                    _ => &c.local,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(page)
            }
        })
        .collect()
}

/// Where the slow path found a page.
enum Source {
    Site,
    Pulled,
}

/// Poll the site (one batched request per try, backing off) for `ids`
/// until they are all there or the wait is over; what arrives, at the site
/// or here (a later batch of this very stream), moves from `ids` to
/// `found`.
async fn wait_at_site(
    shared: &Shared,
    ids: &mut Vec<ChunkId>,
    found: &mut HashMap<ChunkId, Bytes>,
    slow: &mut HashMap<ChunkId, Source>,
) {
    let Some(site) = &shared.opts.site else {
        return;
    };
    let deadline = Instant::now() + shared.opts.wait;
    let mut pause = Duration::from_millis(20);
    while !ids.is_empty() && Instant::now() + pause <= deadline {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
        {
            let local = shared.local.lock();
            ids.retain(|id| match local.get(id) {
                Some(p) => {
                    found.insert(*id, p.clone());
                    false
                }
                None => true,
            });
        }
        if ids.is_empty() {
            break;
        }
        let got = {
            let Ok(_slot) = shared.site_slots.acquire().await else {
                return;
            };
            site.get_many(ids).await
        };
        match got {
            // get_many checked every page against its id.
            Ok(map) => {
                for (id, p) in map.into_iter().filter(|(_, p)| p.len() == PAGE_SIZE) {
                    found.insert(id, p);
                    slow.insert(id, Source::Site);
                }
                ids.retain(|id| !found.contains_key(id));
            }
            Err(e) => {
                tracing::warn!("site lookup of {} pages: {e}; pulling them", ids.len());
                return;
            }
        }
    }
}

/// Ids per pull frame: 32 bytes each, far below the frame limit.
const PULL_FRAME_IDS: usize = 4096;

/// Ask the sender for pages over the WAN connection, in few frames; every
/// page is checked against its id, and an id the sender does not hold
/// fails the migration (it is never zero-filled).
async fn pull_pages(shared: &Shared, ids: Vec<ChunkId>) -> Result<Vec<(ChunkId, Bytes)>> {
    let mut waits = Vec::with_capacity(ids.len());
    let mut to_ask = Vec::new();
    {
        let mut p = shared.pulls.lock();
        for id in ids {
            let (tx, rx) = oneshot::channel();
            let v = p.entry(id).or_default();
            v.push(tx);
            if v.len() == 1 {
                to_ask.push(id);
            }
            waits.push((id, rx));
        }
    }
    if !to_ask.is_empty() {
        shared.room.notify_one();
        let mut w = shared.wr.lock().await;
        for part in to_ask.chunks(PULL_FRAME_IDS) {
            wire::write_frame(&mut *w, &Frame::Pull(part.to_vec())).await?;
        }
    }
    let deadline = tokio::time::Instant::now() + shared.opts.pull_timeout;
    let mut out = Vec::with_capacity(waits.len());
    for (id, rx) in waits {
        let got = tokio::time::timeout_at(deadline, rx)
            .await
            .map_err(|_| AgentError::Timeout(format!("pulling page {id} from the sender")))?
            .map_err(|_| AgentError::Peer("connection closed while pulling a page".into()))?;
        match got {
            Some(p) if ChunkId::of(&p) == id => {
                // Later references to it (repeats) resolve here, not by
                // pulling again.
                shared.local.lock().insert(id, p.clone());
                out.push((id, p));
            }
            Some(_) => return Err(AgentError::BadContent(Unit::Page, id)),
            None => return Err(AgentError::Unknown(Unit::Page, id)),
        }
    }
    Ok(out)
}
