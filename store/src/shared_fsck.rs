//! fsck in shared mode: every chunk location names a segment object that
//! exists and holds an intact record of that chunk (each referenced segment
//! object is read once, whole, and every located record re-hashed), and
//! every manifest's chunks have a location of the right length.
//!
//! Reference counts are not audited here: other frontends commit while
//! fsck runs, so a mismatch seen from one frontend could be a commit in
//! flight elsewhere. Orphan segment objects (nothing located in them) are
//! garbage for `gc`, not problems.

use std::collections::{BTreeMap, HashMap};

use super::error::{Result, StoreError};
use super::fsck::{Corrupt, FsckProblem, FsckReport};
use super::id::ChunkId;
use super::meta::{self, Table};
use super::objstore::Got;
use super::segment::{self, RECORD_HEADER_LEN};
use super::shared::SharedLoc;
use super::Store;

impl Store {
    pub(crate) fn shared_fsck(&self) -> Result<FsckReport> {
        let Some(sh) = self.shared() else {
            return Err(StoreError::Aborted("not a shared store".into()));
        };
        let objects = sh.objects();
        let mut report = FsckReport::default();
        let sizes: HashMap<String, u64> = objects
            .list_detailed("segments/")?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        report.segments = sizes.len();

        let mut by_segment: BTreeMap<u128, Vec<(ChunkId, SharedLoc)>> = BTreeMap::new();
        let mut located: HashMap<ChunkId, SharedLoc> = HashMap::new();
        meta::for_each(&*self.inner().meta, Table::ChunkLocs, b"", |k, v| {
            let Ok(id) = <[u8; 32]>::try_from(k) else {
                return Ok(());
            };
            let loc = SharedLoc::decode(v)?;
            by_segment
                .entry(loc.segment)
                .or_default()
                .push((ChunkId(id), loc));
            located.insert(ChunkId(id), loc);
            Ok(())
        })?;

        let mut corrupt: Vec<Corrupt> = Vec::new();
        for (seg, locs) in &by_segment {
            let key = objects.segment_key(*seg);
            let Some(&size) = sizes.get(&key) else {
                report.problems.push(FsckProblem::UnreadableSegment {
                    segment: key,
                    what: format!(
                        "missing from {}; {} chunk(s) are located in it",
                        objects.name(),
                        locs.len()
                    ),
                });
                continue;
            };
            let data = match objects.get_range(&key, 0, size)? {
                Got::Data(b) => b,
                Got::Missing => {
                    report.problems.push(FsckProblem::UnreadableSegment {
                        segment: key,
                        what: "deleted while fsck ran".into(),
                    });
                    continue;
                }
            };
            for (id, l) in locs {
                report.chunks_checked += 1;
                report.bytes_checked += u64::from(l.len);
                let (at, end) = (l.offset as usize, (l.offset + RECORD_HEADER_LEN) as usize);
                let body_end = end + l.len as usize;
                let what = if body_end > data.len() {
                    Some(format!("record runs past the object's end ({size} bytes)"))
                } else if !segment::decode_record_header(&data[at..end])
                    .is_some_and(|(hid, hlen, _)| hid == *id && hlen == l.len)
                {
                    Some("no intact record header at its location".to_string())
                } else if ChunkId::of(&data[end..body_end]) != *id {
                    Some("bytes do not match its id".to_string())
                } else {
                    None
                };
                if let Some(what) = what {
                    corrupt.push((*id, key.clone(), l.offset, what));
                }
            }
        }

        let referenced =
            self.check_manifests(|id| located.get(id).map(|l| l.len), corrupt, &mut report)?;
        for (id, l) in &located {
            if !referenced.contains(id) {
                report.unreferenced_chunks += 1;
                report.unreferenced_bytes += u64::from(l.len);
            }
        }
        Ok(report)
    }
}
