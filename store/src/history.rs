//! Read-only cost queries and the coarse size history the web console shows
//! (`strato serve`'s `/ui/`).
//!
//! ```text
//! meta Table::History  time ms (u64 big endian) -> HistorySample
//! ```
//!
//! Samples are appended at a coarse interval (minutes) and the oldest are
//! dropped beyond a bound, so the table never grows without limit. Big-endian
//! keys make a scan return them in time order.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::id::ChunkId;
use super::meta::{self, Table};
use super::model::{self, ChunkState};
use super::Store;

/// What one object costs the repository after dedup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObjectCost {
    pub size: u64,
    /// Manifest entries (zero runs included).
    pub chunks: u64,
    /// Distinct stored chunks it names.
    pub distinct_chunks: u64,
    /// Bytes of chunks no other object or part references: what deleting
    /// this object would give back (after GC).
    pub unique_bytes: u64,
    /// Bytes of chunks other objects (or parts in flight) reference too.
    pub shared_bytes: u64,
    /// Bytes of zero runs, which are never stored.
    pub zero_bytes: u64,
}

/// One point of the repository's size history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct HistorySample {
    pub time_ms: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub segment_bytes: u64,
    pub objects: u64,
}

/// The last GC run recorded by `Store::gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRecord {
    pub finished_ms: u64,
    pub reclaimed_chunks: u64,
    pub reclaimed_bytes: u64,
    pub bytes_freed_on_disk: u64,
    pub segments_compacted: u64,
    pub segments_deleted: u64,
    pub aborted_uploads: u64,
}

impl GcRecord {
    pub(crate) fn of(r: &super::GcReport) -> GcRecord {
        GcRecord {
            finished_ms: super::now_ms(),
            reclaimed_chunks: r.reclaimed_chunks as u64,
            reclaimed_bytes: r.reclaimed_bytes,
            bytes_freed_on_disk: r.bytes_freed_on_disk,
            segments_compacted: r.segments_compacted as u64,
            segments_deleted: r.segments_deleted as u64,
            aborted_uploads: r.aborted_uploads as u64,
        }
    }
}

/// The last fsck run recorded by `Store::fsck`, with its first problems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckRecord {
    pub finished_ms: u64,
    pub segments: u64,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    pub manifests: u64,
    pub problems: u64,
    /// At most FIRST_PROBLEMS of them, as fsck printed them.
    pub first_problems: Vec<String>,
}

impl FsckRecord {
    const FIRST_PROBLEMS: usize = 5;

    pub(crate) fn of(r: &super::FsckReport) -> FsckRecord {
        FsckRecord {
            finished_ms: super::now_ms(),
            segments: r.segments as u64,
            chunks_checked: r.chunks_checked as u64,
            bytes_checked: r.bytes_checked,
            manifests: r.manifests as u64,
            problems: r.problems.len() as u64,
            first_problems: r
                .problems
                .iter()
                .take(Self::FIRST_PROBLEMS)
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// Keys of `Table::History` other than samples start with this byte, which
/// no sample key (a time in ms before year 2.2 million) does.
const GC_KEY: &[u8] = b"\xffgc";
const FSCK_KEY: &[u8] = b"\xfffsck";

impl Store {
    /// The cost of `bucket/key` from its manifest and the chunks' reference
    /// counts. A chunk named `n` times by this manifest with `n` references
    /// in all belongs to this object alone.
    pub fn object_cost(&self, bucket: &str, key: &str) -> Result<ObjectCost> {
        let (rec, chunks) = self.manifest(bucket, key)?;
        let mut cost = ObjectCost {
            size: rec.size,
            chunks: chunks.len() as u64,
            ..Default::default()
        };
        let mut uses: HashMap<ChunkId, (u64, u32)> = HashMap::new();
        for c in &chunks {
            if c.id.is_zero_run() {
                cost.zero_bytes += c.len as u64;
            } else {
                uses.entry(c.id).or_insert((0, c.len)).0 += 1;
            }
        }
        cost.distinct_chunks = uses.len() as u64;
        let ids: Vec<ChunkId> = uses.keys().copied().collect();
        for batch in ids.chunks(4096) {
            let keys: Vec<&[u8]> = batch.iter().map(|id| &id.0[..]).collect();
            let states = self.inner().meta.get_many(Table::Chunks, &keys)?;
            for (id, state) in batch.iter().zip(states) {
                let (n, len) = uses[id];
                let refs = match state {
                    Some(v) => model::decode::<ChunkState>(&v)?.refs,
                    None => 0,
                };
                if refs <= n {
                    cost.unique_bytes += len as u64;
                } else {
                    cost.shared_bytes += len as u64;
                }
            }
        }
        Ok(cost)
    }

    /// Append a sample and drop the oldest beyond `keep` (at least 1).
    pub fn record_history(&self, sample: HistorySample, keep: usize) -> Result<()> {
        let keep = keep.max(1);
        let value = model::encode(&sample)?;
        let old = self.history_keys()?;
        let excess = (old.len() + 1).saturating_sub(keep);
        self.inner().meta.write(&mut |tx| {
            for k in old.iter().take(excess) {
                tx.delete(Table::History, k)?;
            }
            tx.put(Table::History, &sample.time_ms.to_be_bytes(), &value)
        })
    }

    /// All samples, oldest first.
    pub fn history(&self) -> Result<Vec<HistorySample>> {
        let mut out = Vec::new();
        meta::for_each(&*self.inner().meta, Table::History, b"", |k, v| {
            if k.len() == 8 {
                out.push(model::decode(v)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn history_keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        meta::for_each(&*self.inner().meta, Table::History, b"", |k, _| {
            if k.len() == 8 {
                out.push(k.to_vec());
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Multipart uploads open in the whole repository.
    pub fn count_uploads(&self) -> Result<u64> {
        let mut n = 0u64;
        meta::for_each(&*self.inner().meta, Table::Uploads, b"", |_, _| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// The last GC run, if one was recorded.
    pub fn last_gc(&self) -> Result<Option<GcRecord>> {
        match self.inner().meta.get(Table::History, GC_KEY)? {
            Some(v) => Ok(Some(model::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The last fsck run, if one was recorded.
    pub fn last_fsck(&self) -> Result<Option<FsckRecord>> {
        match self.inner().meta.get(Table::History, FSCK_KEY)? {
            Some(v) => Ok(Some(model::decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn record_fsck(&self, r: &FsckRecord) -> Result<()> {
        let v = model::encode(r)?;
        self.inner()
            .meta
            .write(&mut |tx| tx.put(Table::History, FSCK_KEY, &v))
    }

    pub(crate) fn record_gc(&self, r: &GcRecord) -> Result<()> {
        let v = model::encode(r)?;
        self.inner()
            .meta
            .write(&mut |tx| tx.put(Table::History, GC_KEY, &v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProfileChoice, StoreConfig};

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), StoreConfig::default()).unwrap();
        s.create_bucket("bkt", "admin").unwrap();
        (d, s)
    }

    fn random(n: usize, seed: u8) -> Vec<u8> {
        let mut x = u64::from(seed) * 0x9e37_79b9_7f4a_7c15 + 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn cost_is_unique_then_shared() {
        let (_d, s) = store();
        let data = random(3 << 20, 1);
        let put = |k: &str| {
            s.put_reader("bkt", k, &data[..], ProfileChoice::Auto, vec![], |_| {})
                .unwrap()
        };
        let first = put("one");
        assert_eq!(first.new_bytes, data.len() as u64);
        let c = s.object_cost("bkt", "one").unwrap();
        assert_eq!(c.size, data.len() as u64);
        assert_eq!(c.unique_bytes, data.len() as u64);
        assert_eq!(c.shared_bytes, 0);
        assert!(c.distinct_chunks > 0 && c.chunks >= c.distinct_chunks);
        let second = put("two");
        assert_eq!(second.new_bytes, 0);
        let c = s.object_cost("bkt", "one").unwrap();
        assert_eq!(c.unique_bytes, 0);
        assert_eq!(c.shared_bytes, data.len() as u64);
        s.delete_object("bkt", "two").unwrap();
        assert_eq!(
            s.object_cost("bkt", "one").unwrap().unique_bytes,
            data.len() as u64
        );
        assert!(s.object_cost("bkt", "missing").is_err());
    }

    #[test]
    fn fsck_runs_are_recorded() {
        let (_d, s) = store();
        assert_eq!(s.last_fsck().unwrap(), None);
        s.put_reader(
            "bkt",
            "a",
            &random(1 << 20, 1)[..],
            ProfileChoice::Auto,
            vec![],
            |_| {},
        )
        .unwrap();
        let r = s.fsck().unwrap();
        let rec = s.last_fsck().unwrap().unwrap();
        assert_eq!(rec.problems, 0);
        assert_eq!(rec.chunks_checked, r.chunks_checked as u64);
        assert!(
            rec.bytes_checked >= 1 << 20 && rec.manifests == 1,
            "{rec:?}"
        );
        // History samples are not confused with it.
        assert!(s.history().unwrap().is_empty());
    }

    #[test]
    fn history_is_bounded_and_ordered() {
        let (_d, s) = store();
        for t in 1..=10u64 {
            let sample = HistorySample {
                time_ms: t * 1000,
                logical_bytes: t,
                ..Default::default()
            };
            s.record_history(sample, 4).unwrap();
        }
        let h = s.history().unwrap();
        assert_eq!(
            h.iter().map(|x| x.logical_bytes).collect::<Vec<_>>(),
            vec![7, 8, 9, 10]
        );
        assert_eq!(s.last_gc().unwrap(), None);
        let r = GcRecord {
            finished_ms: 5,
            reclaimed_bytes: 9,
            ..Default::default()
        };
        s.record_gc(&r).unwrap();
        assert_eq!(s.last_gc().unwrap(), Some(r));
        // The GC record is not a sample.
        assert_eq!(s.history().unwrap().len(), 4);
    }
}
