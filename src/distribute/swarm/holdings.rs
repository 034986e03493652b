//! Where a swarm agent keeps the chunks it has verified, serves them from,
//! and makes the object at the end: a node-local store (the object is
//! committed with `Store::commit_object`, like a pull, so later versions
//! deduplicate against it), or a file `OUT_DIR/NAME` written in place at
//! each chunk's offsets and renamed over NAME when whole (the name checked
//! as the chain checks it). Calls block: the agent runs them on blocking
//! threads.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chunk_api::ManifestDoc;

use crate::store::{ChunkId, Store};

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("object name {0:?} is not a plain file name")]
    Name(String),
}

pub trait Holdings: Send + Sync {
    /// Whether the chunk is here already (it is then never fetched).
    fn has(&self, id: &ChunkId) -> bool;
    /// Keep a verified chunk.
    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), HoldError>;
    /// A chunk held (for a peer).
    fn get(&self, id: &ChunkId) -> Result<Bytes, HoldError>;
    /// Every chunk is held: make the object. Returns where it is.
    fn finish(&self) -> Result<String, HoldError>;
}

/// Chunks in a node-local store; the object committed under its bucket and key.
pub struct StoreHoldings {
    store: Store,
    doc: ManifestDoc,
}

impl StoreHoldings {
    pub fn new(store: Store, doc: ManifestDoc) -> StoreHoldings {
        StoreHoldings { store, doc }
    }
}

impl Holdings for StoreHoldings {
    fn has(&self, id: &ChunkId) -> bool {
        self.store.has_chunk(id)
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), HoldError> {
        // Unsynced: the commit at the end syncs every segment it references.
        self.store.put_chunk_unsynced(id, data)?;
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<Bytes, HoldError> {
        Ok(self.store.read_chunk(id)?)
    }

    fn finish(&self) -> Result<String, HoldError> {
        crate::distribute::pull::commit_in_cache(&self.store, &self.doc)?;
        Ok(format!(
            "{}/{} in the node's store",
            self.doc.bucket, self.doc.key
        ))
    }
}

/// Chunks written into `OUT_DIR/.NAME.strato-swarm` at their offsets (zero
/// runs stay holes), renamed to `OUT_DIR/NAME` when whole.
pub struct FileHoldings {
    file: File,
    part: PathBuf,
    out: PathBuf,
    /// Every offset of each distinct chunk, and its length.
    offsets: HashMap<ChunkId, (u32, Vec<u64>)>,
}

impl FileHoldings {
    /// NAME is the last component of the object's key, checked: no
    /// `..`, `/`, NUL or empty name reaches the filesystem.
    pub fn create(out_dir: &Path, doc: &ManifestDoc) -> Result<FileHoldings, HoldError> {
        let name = doc.key.rsplit('/').next().unwrap_or(&doc.key);
        chain_broadcast::check_file_name(name).map_err(|_| HoldError::Name(name.to_string()))?;
        let out = out_dir.join(name);
        let part = crate::distribute::partial_path(&out, "swarm");
        let io = |source| HoldError::Io {
            path: part.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .map_err(io)?;
        file.set_len(doc.size).map_err(io)?;
        let mut offsets: HashMap<ChunkId, (u32, Vec<u64>)> = HashMap::new();
        let mut off = 0u64;
        for c in &doc.chunks {
            if !c.id.is_zero_run() {
                offsets
                    .entry(c.id)
                    .or_insert((c.len, Vec::new()))
                    .1
                    .push(off);
            }
            off += u64::from(c.len);
        }
        Ok(FileHoldings {
            file,
            part,
            out,
            offsets,
        })
    }

    fn io(&self) -> impl Fn(std::io::Error) -> HoldError + '_ {
        move |source| HoldError::Io {
            path: self.part.clone(),
            source,
        }
    }
}

impl Holdings for FileHoldings {
    fn has(&self, _id: &ChunkId) -> bool {
        false
    }

    fn put(&self, id: &ChunkId, data: &[u8]) -> Result<(), HoldError> {
        if let Some((_, offs)) = self.offsets.get(id) {
            for off in offs {
                self.file.write_all_at(data, *off).map_err(self.io())?;
            }
        }
        Ok(())
    }

    fn get(&self, id: &ChunkId) -> Result<Bytes, HoldError> {
        let (len, offs) = self.offsets.get(id).ok_or_else(|| HoldError::Io {
            path: self.part.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "chunk not in this image"),
        })?;
        let mut buf = vec![0u8; *len as usize];
        self.file
            .read_exact_at(&mut buf, offs[0])
            .map_err(self.io())?;
        Ok(Bytes::from(buf))
    }

    fn finish(&self) -> Result<String, HoldError> {
        self.file.sync_all().map_err(self.io())?;
        // Keep serving from the same inode after the rename (the handle
        // stays valid), so seeding continues from the finished file.
        std::fs::rename(&self.part, &self.out).map_err(|source| HoldError::Io {
            path: self.out.clone(),
            source,
        })?;
        if let Some(dir) = self.out.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.out.display().to_string())
    }
}

impl Drop for FileHoldings {
    fn drop(&mut self) {
        // An unfinished image never stays behind under a name a reader
        // could mistake for it (renamed already: nothing to remove).
        let _ = std::fs::remove_file(&self.part);
    }
}
