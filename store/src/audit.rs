//! Walks every manifest (objects and uploaded parts): the mark phase shared by
//! GC's reference-count audit, fsck and stats.

use std::collections::HashMap;

use super::error::Result;
use super::id::{BuildIdHasher, ChunkId};
use super::meta::{self, Table};
use super::model::{self, ManifestEntry, PartRecord};
use super::Store;

/// A chunk whose recorded reference state disagrees with the manifests.
pub(crate) struct RefMismatch {
    pub id: ChunkId,
    /// None: manifests reference the chunk but no state was recorded.
    pub recorded: Option<model::ChunkState>,
    pub actual: u64,
}

impl RefMismatch {
    pub fn recorded_refs(&self) -> u64 {
        self.recorded.map(|s| s.refs).unwrap_or(0)
    }
}

pub(crate) struct RefAudit {
    /// Reference counts recomputed from every manifest.
    pub actual: HashMap<ChunkId, u64, BuildIdHasher>,
    /// Reference state as recorded in metadata.
    pub recorded: HashMap<ChunkId, model::ChunkState, BuildIdHasher>,
    pub mismatches: Vec<RefMismatch>,
}

/// Which manifest a chunk list belongs to.
pub enum Owner<'a> {
    Object {
        bucket: &'a str,
        key: &'a str,
        profile: &'a str,
    },
    Part {
        upload_id: &'a str,
        part: u32,
    },
}

impl Owner<'_> {
    pub fn describe(&self) -> String {
        match self {
            Owner::Object { bucket, key, .. } => format!("{bucket}/{key}"),
            Owner::Part { upload_id, part } => format!("upload {upload_id} part {part}"),
        }
    }
}

impl Store {
    pub(crate) fn for_each_manifest(
        &self,
        mut f: impl FnMut(Owner<'_>, u64, &[ManifestEntry]),
    ) -> Result<()> {
        let meta = &*self.inner().meta;
        meta::for_each(meta, Table::Manifests, b"", |k, v| {
            let m: model::Manifest = model::decode(v)?;
            let split = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            let bucket = String::from_utf8_lossy(&k[..split]);
            let key = String::from_utf8_lossy(k.get(split + 1..).unwrap_or_default());
            let rec: Option<model::ObjectRecord> = meta
                .get(Table::Objects, k)?
                .map(|r| model::decode(&r))
                .transpose()?;
            let (size, profile) = rec.map(|r| (r.size, r.profile)).unwrap_or_default();
            f(
                Owner::Object {
                    bucket: &bucket,
                    key: &key,
                    profile: &profile,
                },
                size,
                &m.chunks,
            );
            Ok(())
        })?;
        meta::for_each(meta, Table::Parts, b"", |k, v| {
            let p: PartRecord = model::decode(v)?;
            let split = k.iter().position(|&b| b == 0).unwrap_or(k.len());
            let upload_id = String::from_utf8_lossy(&k[..split]);
            let part = k
                .get(split + 1..)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            f(
                Owner::Part {
                    upload_id: &upload_id,
                    part,
                },
                p.size,
                &p.chunks,
            );
            Ok(())
        })
    }

    /// Reference counts recomputed from the manifests themselves.
    pub(crate) fn true_refs(&self) -> Result<HashMap<ChunkId, u64, BuildIdHasher>> {
        let mut refs: HashMap<ChunkId, u64, BuildIdHasher> = HashMap::default();
        self.for_each_manifest(|_, _, chunks| {
            for c in chunks.iter().filter(|c| !c.id.is_zero_run()) {
                *refs.entry(c.id).or_insert(0) += 1;
            }
        })?;
        Ok(refs)
    }

    /// Mark and sweep: recompute every chunk's reference count from the
    /// manifests and list the chunks whose recorded state disagrees. Call it
    /// with manifest commits paused (the commit lock held exclusively), so
    /// both sides describe one state.
    pub(crate) fn audit_refs(&self) -> Result<RefAudit> {
        let actual = self.true_refs()?;
        let recorded = self.recorded_refs()?;
        let mut mismatches = Vec::new();
        for (id, state) in &recorded {
            let a = actual.get(id).copied().unwrap_or(0);
            if a != state.refs {
                mismatches.push(RefMismatch {
                    id: *id,
                    recorded: Some(*state),
                    actual: a,
                });
            }
        }
        for (id, a) in &actual {
            if !recorded.contains_key(id) {
                mismatches.push(RefMismatch {
                    id: *id,
                    recorded: None,
                    actual: *a,
                });
            }
        }
        Ok(RefAudit {
            actual,
            recorded,
            mismatches,
        })
    }

    /// Reference state as recorded in metadata.
    pub(crate) fn recorded_refs(
        &self,
    ) -> Result<HashMap<ChunkId, model::ChunkState, BuildIdHasher>> {
        let mut out = HashMap::default();
        meta::for_each(&*self.inner().meta, Table::Chunks, b"", |k, v| {
            if let Ok(id) = <[u8; 32]>::try_from(k) {
                out.insert(ChunkId(id), model::decode(v)?);
            }
            Ok(())
        })?;
        Ok(out)
    }
}
