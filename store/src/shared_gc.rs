//! Garbage collection in shared mode (segments in an object store, metadata
//! in a database shared by many frontends): one frontend at a time, under a
//! lease row, reclaims segment objects that nothing references — the
//! uploads of writes that crashed, were killed or failed before their
//! commit, and the losing copy of two frontends ingesting the same data.
//!
//! An object is deleted only when all of these hold:
//! - no chunk location names it (Table::ChunkLocs, read after the listing
//!   and after the registrations, see below);
//! - the object store last wrote it more than `grace` ago;
//! - it is not registered in flight, or its registration's heartbeat is
//!   older than `grace` and this GC removes the registration first, in a
//!   transaction that re-checks it (shared.rs explains why a commit racing
//!   with that removal then fails instead of referencing a deleted object).
//!
//! The order of the reads matters: an object in the listing was registered
//! before it was uploaded, so by the time the registrations are read it is
//! either still registered (skipped while its heartbeat is fresh) or
//! committed, and then its locations are in the scan that follows.
//!
//! Not done here yet: dead space inside referenced segments (chunks whose
//! reference count fell to zero) is not compacted, so deleting objects
//! reclaims whole unreferenced segments only.

use std::collections::{HashMap, HashSet};

use super::error::{Result, StoreError};
use super::gc::{GcOptions, GcReport};
use super::meta::{self, Table};
use super::model;
use super::shared::SharedLoc;
use super::{now_ms, Store};

/// The lease row in Table::Misc: holder (16 bytes) + expiry ms (u64 LE).
const LEASE_KEY: &[u8] = b"shared-gc-lease";
/// How long a lease holds without renewal: a GC that dies leaves the lease
/// to expire, so it must not be longer than an operator will wait.
const LEASE_MS: u64 = 10 * 60 * 1000;

/// What one shared-mode GC run saw and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SharedGcReport {
    pub segment_objects: usize,
    pub referenced_segments: usize,
    /// Unreferenced objects deleted, and their bytes.
    pub orphans_deleted: usize,
    pub orphan_bytes_deleted: u64,
    /// Unreferenced but younger than the grace period, or registered by a
    /// write whose heartbeat is fresh: left for a later run.
    pub orphans_waiting: usize,
    /// Registrations of writes that died, removed.
    pub stale_registrations_removed: usize,
}

impl Store {
    pub(crate) fn shared_gc(&self, opts: &GcOptions) -> Result<GcReport> {
        let Some(sh) = self.shared() else {
            return Err(StoreError::Aborted("not a shared store".into()));
        };
        let holder: u128 = rand::random();
        self.take_gc_lease(holder)?;
        let r = self.shared_gc_leased(sh.objects(), opts);
        self.release_gc_lease(holder);
        r
    }

    fn shared_gc_leased(
        &self,
        objects: &super::objstore::ObjectStore,
        opts: &GcOptions,
    ) -> Result<GcReport> {
        let mut report = GcReport::default();
        let now = now_ms();
        let grace_ms = u64::try_from(opts.grace.as_millis()).unwrap_or(u64::MAX);
        let expiry_ms = u64::try_from(opts.upload_expiry.as_millis()).unwrap_or(u64::MAX);

        // Multipart uploads idle past their expiry, as in local mode.
        let mut expired = Vec::new();
        meta::for_each(&*self.inner().meta, Table::Uploads, b"", |k, v| {
            let u: model::UploadRecord = model::decode(v)?;
            if now.saturating_sub(u.initiated_ms) > expiry_ms {
                expired.push(String::from_utf8_lossy(k).into_owned());
            }
            Ok(())
        })?;
        for upload in &expired {
            if self.abort_upload(upload).is_ok() {
                report.aborted_uploads += 1;
            }
        }
        report.plan.expired_uploads = expired;

        // 1. the objects, 2. the registrations, 3. the locations: in this
        // order (see the module doc).
        let listed = objects.list_detailed("segments/")?;
        let mut registered: HashMap<u128, u64> = HashMap::new();
        meta::for_each(&*self.inner().meta, Table::Inflight, b"", |k, v| {
            if let (Ok(k), Ok(v)) = (<[u8; 16]>::try_from(k), <[u8; 8]>::try_from(v)) {
                registered.insert(u128::from_be_bytes(k), u64::from_le_bytes(v));
            }
            Ok(())
        })?;
        let mut referenced: HashSet<u128> = HashSet::new();
        meta::for_each(&*self.inner().meta, Table::ChunkLocs, b"", |_, v| {
            referenced.insert(SharedLoc::decode(v)?.segment);
            Ok(())
        })?;

        let mut sg = SharedGcReport {
            segment_objects: listed.len(),
            referenced_segments: referenced.len(),
            ..SharedGcReport::default()
        };
        let mut seen: HashSet<u128> = HashSet::new();
        for o in &listed {
            // Only names strato made; anything else in the prefix is left be.
            let Some(seg) = segment_id_of(&o.key) else {
                continue;
            };
            seen.insert(seg);
            if referenced.contains(&seg) {
                continue;
            }
            let young = o
                .modified_ms
                .is_none_or(|m| now.saturating_sub(m) < grace_ms);
            let fresh = registered
                .get(&seg)
                .is_some_and(|hb| now.saturating_sub(*hb) < grace_ms);
            if young || fresh {
                sg.orphans_waiting += 1;
                continue;
            }
            if registered.contains_key(&seg) && !self.remove_stale_registration(seg, grace_ms)? {
                // Committed (or refreshed) since we looked: not an orphan.
                sg.orphans_waiting += 1;
                continue;
            }
            objects.delete(&o.key)?;
            tracing::info!(object = %o.key, bytes = o.size, "gc: deleted an orphan segment object");
            sg.orphans_deleted += 1;
            sg.orphan_bytes_deleted += o.size;
        }
        // Registrations whose object never made it (a crash between the
        // registration and the upload) or is gone: drop them once stale.
        for (seg, hb) in &registered {
            if !seen.contains(seg)
                && now.saturating_sub(*hb) >= grace_ms
                && self.remove_stale_registration(*seg, grace_ms)?
            {
                sg.stale_registrations_removed += 1;
            }
        }
        report.segments_deleted = sg.orphans_deleted;
        report.bytes_freed_on_disk = sg.orphan_bytes_deleted;
        report.shared = Some(sg);
        Ok(report)
    }

    /// Remove `seg`'s registration if it is still there and still stale;
    /// true if removed (the segment can no longer be committed).
    fn remove_stale_registration(&self, seg: u128, grace_ms: u64) -> Result<bool> {
        let key = seg.to_be_bytes();
        let mut removed = false;
        self.inner().meta.write(&mut |tx| {
            removed = false;
            let Some(v) = tx.get(Table::Inflight, &key)? else {
                return Ok(());
            };
            let hb = <[u8; 8]>::try_from(v.as_slice()).map_or(0, u64::from_le_bytes);
            if now_ms().saturating_sub(hb) >= grace_ms {
                tx.delete(Table::Inflight, &key)?;
                removed = true;
            }
            Ok(())
        })?;
        Ok(removed)
    }

    fn take_gc_lease(&self, holder: u128) -> Result<()> {
        let mut busy: Option<u64> = None;
        self.inner().meta.write(&mut |tx| {
            busy = None;
            let now = now_ms();
            if let Some(v) = tx.get(Table::Misc, LEASE_KEY)? {
                let until = v
                    .get(16..24)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_le_bytes);
                if until > now {
                    busy = Some(until - now);
                    return Ok(());
                }
            }
            let mut v = holder.to_le_bytes().to_vec();
            v.extend_from_slice(&(now + LEASE_MS).to_le_bytes());
            tx.put(Table::Misc, LEASE_KEY, &v)
        })?;
        match busy {
            Some(left) => Err(StoreError::Busy(format!(
                "another frontend is running GC on this repository (its lease ends within {} s)",
                left.div_ceil(1000)
            ))),
            None => Ok(()),
        }
    }

    fn release_gc_lease(&self, holder: u128) {
        let r = self.inner().meta.write(&mut |tx| {
            let ours = tx
                .get(Table::Misc, LEASE_KEY)?
                .is_some_and(|v| v.get(..16) == Some(&holder.to_le_bytes()[..]));
            if ours {
                tx.delete(Table::Misc, LEASE_KEY)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!("cannot release the GC lease (it expires by itself): {e}");
        }
    }
}

/// `…/segments/<32 hex digits>.seg` -> the id.
fn segment_id_of(key: &str) -> Option<u128> {
    let name = key.rsplit('/').next()?;
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::segment_id_of;

    #[test]
    fn only_segment_names_parse() {
        let id = 0x0123_4567_89ab_cdef_0011_2233_4455_6677_u128;
        assert_eq!(
            segment_id_of(&format!("p/segments/{id:032x}.seg")),
            Some(id)
        );
        assert_eq!(segment_id_of("p/segments/abc.seg"), None);
        assert_eq!(segment_id_of("p/segments/FORMAT"), None);
        assert_eq!(segment_id_of(&format!("p/segments/{id:032x}.tmp")), None);
    }
}
