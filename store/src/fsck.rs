//! fsck: re-hash every stored chunk, check every manifest's chunks exist with
//! the right lengths, and check recorded reference counts against the
//! manifests. Every problem is named; garbage (unreferenced chunks) is not a
//! problem, only reported.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::error::Result;
use super::id::ChunkId;
use super::index::Loc;
use super::Store;

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FsckProblem {
    CorruptChunk {
        chunk: String,
        segment: String,
        offset: u64,
        what: String,
        used_by: Vec<String>,
    },
    SegmentHashMismatch {
        segment: String,
    },
    UnreadableSegment {
        segment: String,
        what: String,
    },
    MissingChunk {
        object: String,
        chunk: String,
    },
    WrongLength {
        object: String,
        chunk: String,
        manifest_len: u32,
        stored_len: u32,
    },
    RefCountMismatch {
        chunk: String,
        recorded: u64,
        actual: u64,
    },
}

impl std::fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsckProblem::CorruptChunk { chunk, segment, offset, what, used_by } => write!(
                f,
                "corrupt chunk {chunk} in {segment} at offset {offset}: {what}; used by {}",
                if used_by.is_empty() { "nothing".to_string() } else { used_by.join(", ") }
            ),
            FsckProblem::SegmentHashMismatch { segment } => {
                write!(f, "segment {segment}: trailer hash does not match its contents")
            }
            FsckProblem::UnreadableSegment { segment, what } => write!(f, "segment {segment}: {what}"),
            FsckProblem::MissingChunk { object, chunk } => {
                write!(f, "{object}: chunk {chunk} is missing from the store")
            }
            FsckProblem::WrongLength { object, chunk, manifest_len, stored_len } => write!(
                f,
                "{object}: chunk {chunk} is {stored_len} bytes on disk, the manifest says {manifest_len}"
            ),
            FsckProblem::RefCountMismatch { chunk, recorded, actual } => write!(
                f,
                "chunk {chunk}: reference count is {recorded}, manifests reference it {actual} times"
            ),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    pub segments: usize,
    pub chunks_checked: usize,
    pub bytes_checked: u64,
    pub manifests: usize,
    pub unreferenced_chunks: usize,
    pub unreferenced_bytes: u64,
    pub problems: Vec<FsckProblem>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    pub fn fsck(&self) -> Result<FsckReport> {
        let report = if self.shared().is_some() {
            self.shared_fsck()?
        } else {
            self.local_fsck()?
        };
        // For the web console's repository page; a failure to note it does
        // not change the check's answer, so it is only logged.
        if let Err(e) = self.record_fsck(&super::history::FsckRecord::of(&report)) {
            tracing::warn!("recording the fsck run failed: {e}");
        }
        Ok(report)
    }

    fn local_fsck(&self) -> Result<FsckReport> {
        self.seal_idle_segments()?;
        let mut report = FsckReport::default();
        let index: HashMap<ChunkId, Loc> = self.inner().index.snapshot().into_iter().collect();
        let segments: BTreeMap<u32, _> = self
            .inner()
            .segments
            .read()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut corrupt: Vec<Corrupt> = Vec::new();
        for (id, seg) in &segments {
            report.segments += 1;
            let name = seg.path.display().to_string();
            let records = if seg.is_sealed() {
                match seg.records() {
                    Ok(r) => r,
                    Err(e) => {
                        report.problems.push(FsckProblem::UnreadableSegment {
                            segment: name,
                            what: e.to_string(),
                        });
                        continue;
                    }
                }
            } else {
                continue; // being written right now
            };
            let check = super::segment::verify_segment(seg, &records)?;
            report.chunks_checked += records.len();
            report.bytes_checked += records.iter().map(|r| r.len as u64).sum::<u64>();
            if !check.segment_hash_ok {
                report.problems.push(FsckProblem::SegmentHashMismatch {
                    segment: name.clone(),
                });
            }
            for (r, what) in check.bad_records {
                // Only the copy the index uses matters to readers.
                let used = index
                    .get(&r.id)
                    .is_some_and(|l| l.segment == *id && l.offset == r.offset);
                if used {
                    corrupt.push((r.id, name.clone(), r.offset, what));
                }
            }
        }
        let referenced =
            self.check_manifests(|id| index.get(id).map(|l| l.len), corrupt, &mut report)?;
        let _paused = self.inner().commit_lock.write();
        let audit = self.audit_refs()?;
        drop(_paused);
        report.problems.extend(
            audit
                .mismatches
                .iter()
                .map(|m| FsckProblem::RefCountMismatch {
                    chunk: m.id.to_hex(),
                    recorded: m.recorded_refs(),
                    actual: m.actual,
                }),
        );
        for (id, loc) in &index {
            if !referenced.contains(id) {
                report.unreferenced_chunks += 1;
                report.unreferenced_bytes += loc.len as u64;
            }
        }
        Ok(report)
    }

    /// Check every manifest's chunks against `stored_len` (the length the
    /// store holds for an id, if any), file `corrupt` with the objects that
    /// use each chunk, and return the ids manifests reference. Shared by the
    /// local and the shared-mode fsck, which differ in how they scan.
    pub(crate) fn check_manifests(
        &self,
        stored_len: impl Fn(&ChunkId) -> Option<u32>,
        corrupt: Vec<Corrupt>,
        report: &mut FsckReport,
    ) -> Result<HashSet<ChunkId>> {
        let corrupt_ids: HashSet<ChunkId> = corrupt.iter().map(|c| c.0).collect();
        let mut used_by: HashMap<ChunkId, Vec<String>> = HashMap::new();
        let mut manifest_problems = Vec::new();
        let mut referenced: HashSet<ChunkId> = HashSet::new();
        let mut manifests = 0;
        self.for_each_manifest(|owner, _, chunks| {
            manifests += 1;
            for c in chunks.iter().filter(|c| !c.id.is_zero_run()) {
                referenced.insert(c.id);
                match stored_len(&c.id) {
                    None => manifest_problems.push(FsckProblem::MissingChunk {
                        object: owner.describe(),
                        chunk: c.id.to_hex(),
                    }),
                    Some(len) if len != c.len => manifest_problems.push(FsckProblem::WrongLength {
                        object: owner.describe(),
                        chunk: c.id.to_hex(),
                        manifest_len: c.len,
                        stored_len: len,
                    }),
                    Some(_) => {}
                }
                if corrupt_ids.contains(&c.id) {
                    let v = used_by.entry(c.id).or_default();
                    let name = owner.describe();
                    if !v.contains(&name) {
                        v.push(name);
                    }
                }
            }
        })?;
        report.manifests += manifests;
        for (id, segment, offset, what) in corrupt {
            report.problems.push(FsckProblem::CorruptChunk {
                chunk: id.to_hex(),
                segment,
                offset,
                what,
                used_by: used_by.remove(&id).unwrap_or_default(),
            });
        }
        report.problems.extend(manifest_problems);
        Ok(referenced)
    }
}

/// A damaged record a scan found: chunk, segment name, offset, what is wrong.
pub(crate) type Corrupt = (ChunkId, String, u64, String);
