//! Where chunks come from (sender) and go to (each node).
//!
//! The traits are blocking on purpose: a store is synchronous code (files,
//! an embedded database), and the chain calls these methods on blocking
//! threads (`spawn_blocking`), never on the async workers.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;

use crate::error::BoxError;
use crate::manifest::{ChunkId, Manifest, TransferInfo};

/// Gives chunk bytes by id. The sender reads the object through it; a relay
/// reads back what it stored when it must resupply a node after a bypass.
pub trait ChunkSource: Send + Sync + 'static {
    /// The bytes of `id`. The caller verifies them against the id.
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError>;
}

/// Where one node puts one object. One value per transfer and connection,
/// made by a [`SinkFactory`]; a node reached twice for the same transfer
/// (after its upstream was bypassed) gets a second sink, which should see
/// what the first one stored. Two sinks of one transfer may be live at
/// once for a moment (the old connection is still failing), so `put` of a
/// chunk already stored must be harmless.
///
/// `get` (from [`ChunkSource`]) is how a node resupplies its successor after
/// a bypass; it is asked only for chunks this sink reported held or stored.
pub trait ChunkSink: ChunkSource {
    /// For each id, whether the sink already holds it (same order). Held
    /// chunks are not sent to this node.
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError>;
    /// Stores one chunk whose bytes the chain has already verified.
    fn put(&self, id: &ChunkId, data: Bytes) -> Result<(), BoxError>;
    /// Every chunk of `manifest` has been put or was held: make the object
    /// durable and visible. Returns the bytes this sink wrote for it. Called
    /// at most once, and only when the whole object is present.
    fn finish(&self, manifest: &Manifest) -> Result<u64, BoxError>;
    /// The transfer to this node failed; the object must not become
    /// visible. Stored chunks may be kept (a retry resumes from them).
    fn abort(&self) {}
}

/// Makes a sink for each incoming transfer.
pub trait SinkFactory: Send + Sync + 'static {
    /// A sink for `info`; an error refuses the transfer.
    fn open(&self, info: &TransferInfo) -> Result<Arc<dyn ChunkSink>, BoxError>;
}

impl<F> SinkFactory for F
where
    F: Fn(&TransferInfo) -> Result<Arc<dyn ChunkSink>, BoxError> + Send + Sync + 'static,
{
    fn open(&self, info: &TransferInfo) -> Result<Arc<dyn ChunkSink>, BoxError> {
        self(info)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere does not make a set of ids wrong.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// In-memory store

/// A chunk store in memory: a source for the sender and a sink factory for
/// nodes. For tests and benchmarks, and a model for real stores.
#[derive(Default)]
pub struct MemStore {
    chunks: Mutex<HashMap<ChunkId, Bytes>>,
    objects: Mutex<HashMap<String, Arc<Manifest>>>,
    bytes_put: AtomicU64,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(MemStore::default())
    }

    /// Adds chunks directly (as if an older version were present).
    pub fn insert(&self, id: ChunkId, data: Bytes) {
        lock(&self.chunks).insert(id, data);
    }

    /// Whether `id` is held.
    pub fn contains(&self, id: &ChunkId) -> bool {
        lock(&self.chunks).contains_key(id)
    }

    /// Total chunk bytes stored through sinks since creation.
    pub fn bytes_put(&self) -> u64 {
        self.bytes_put.load(Ordering::Relaxed)
    }

    /// The bytes of a finished object, if it finished.
    pub fn object(&self, name: &str) -> Option<Vec<u8>> {
        let manifest = lock(&self.objects).get(name)?.clone();
        let chunks = lock(&self.chunks);
        let mut out = Vec::with_capacity(manifest.size() as usize);
        for c in &manifest.chunks {
            out.extend_from_slice(chunks.get(&c.id)?);
        }
        Some(out)
    }

    /// A sink factory over this store.
    pub fn factory(self: &Arc<Self>) -> Arc<dyn SinkFactory> {
        let store = Arc::clone(self);
        Arc::new(
            move |info: &TransferInfo| -> Result<Arc<dyn ChunkSink>, BoxError> {
                Ok(Arc::new(MemSink {
                    store: Arc::clone(&store),
                    name: info.name.clone(),
                    written: AtomicU64::new(0),
                }))
            },
        )
    }
}

impl ChunkSource for MemStore {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        lock(&self.chunks)
            .get(id)
            .cloned()
            .ok_or_else(|| format!("chunk {id} not in store").into())
    }
}

struct MemSink {
    store: Arc<MemStore>,
    name: String,
    written: AtomicU64,
}

impl ChunkSource for MemSink {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        self.store.get(id)
    }
}

impl ChunkSink for MemSink {
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError> {
        let chunks = lock(&self.store.chunks);
        Ok(ids.iter().map(|id| chunks.contains_key(id)).collect())
    }

    fn put(&self, id: &ChunkId, data: Bytes) -> Result<(), BoxError> {
        let n = data.len() as u64;
        lock(&self.store.chunks).insert(*id, data);
        self.written.fetch_add(n, Ordering::Relaxed);
        self.store.bytes_put.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn finish(&self, manifest: &Manifest) -> Result<u64, BoxError> {
        {
            let chunks = lock(&self.store.chunks);
            if let Some(c) = manifest.chunks.iter().find(|c| !chunks.contains_key(&c.id)) {
                return Err(format!("chunk {} missing at finish", c.id).into());
            }
        }
        lock(&self.store.objects).insert(self.name.clone(), Arc::new(manifest.clone()));
        Ok(self.written.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------
// Files

/// Writes each object to `out_dir/NAME`. Chunks land at their offsets in a
/// hidden partial file (`.NAME.<transfer id>.part`) which is renamed into
/// place by `finish` once every chunk is present, so a truncated image never
/// appears under its name. A later connection for the same transfer (after
/// a bypass, or after the agent restarted) resumes from the chunks the
/// partial file already holds. Partial files of transfers that never
/// complete stay behind for the operator (or a cleanup job) to remove.
///
/// If `out_dir/NAME` already exists (an older version of the image), the
/// chunks it holds at the same offsets are copied locally and announced as
/// held, so only changed chunks cross the network. Disk images keep their
/// layout across versions, so this catches nearly every unchanged chunk.
pub struct FileSinkFactory {
    out_dir: PathBuf,
    seed: bool,
    durable: bool,
    parts: Mutex<HashMap<(String, u64), Weak<Part>>>,
}

impl FileSinkFactory {
    /// Writes into `out_dir`, which must exist.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        FileSinkFactory {
            out_dir: out_dir.into(),
            seed: true,
            durable: true,
            parts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether to reuse chunks of an existing file of the same name (on by
    /// default).
    pub fn seed_from_existing(mut self, on: bool) -> Self {
        self.seed = on;
        self
    }

    /// Whether `finish` syncs the file to disk before renaming it into place
    /// (on by default). Off only for measurements that compare with tools
    /// that do not sync either.
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }

    /// The directory objects are written to.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }
}

/// Refuses names that would escape the output directory.
pub fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
    {
        return Err(format!("object name {name:?} is not a plain file name"));
    }
    Ok(())
}

struct Part {
    file: File,
    part_path: PathBuf,
    final_path: PathBuf,
    durable: bool,
    /// Length and every offset of each distinct chunk.
    offsets: HashMap<ChunkId, (u32, Vec<u64>)>,
    held: Mutex<HashSet<ChunkId>>,
    finished: Mutex<bool>,
}

impl SinkFactory for FileSinkFactory {
    fn open(&self, info: &TransferInfo) -> Result<Arc<dyn ChunkSink>, BoxError> {
        check_file_name(&info.name)?;
        let key = (info.name.clone(), info.transfer_id);
        let mut parts = lock(&self.parts);
        // A part lives while a sink of it does; forget the dead ones.
        parts.retain(|_, p| p.strong_count() > 0);
        if let Some(part) = parts.get(&key).and_then(Weak::upgrade) {
            return Ok(Arc::new(FileSink {
                part,
                written: AtomicU64::new(0),
            }));
        }
        let part_path = self
            .out_dir
            .join(format!(".{}.{:016x}.part", info.name, info.transfer_id));
        // A part file left by an earlier attempt at this transfer (a bypass,
        // a restart) is resumed from, not truncated.
        let resumed = part_path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)?;
        file.set_len(info.manifest.size())?;
        let mut offsets: HashMap<ChunkId, (u32, Vec<u64>)> = HashMap::new();
        for (c, off) in info.manifest.chunks.iter().zip(info.manifest.offsets()) {
            offsets
                .entry(c.id)
                .or_insert((c.len, Vec::new()))
                .1
                .push(off);
        }
        let part = Arc::new(Part {
            file,
            part_path,
            final_path: self.out_dir.join(&info.name),
            durable: self.durable,
            offsets,
            held: Mutex::new(HashSet::new()),
            finished: Mutex::new(false),
        });
        if resumed {
            seed_from(&part, &part.file, true, &info.manifest)?;
        }
        if self.seed {
            match File::open(&part.final_path) {
                Ok(old) if old.metadata()?.is_file() => {
                    seed_from(&part, &old, false, &info.manifest)?
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        parts.insert(key, Arc::downgrade(&part));
        Ok(Arc::new(FileSink {
            part,
            written: AtomicU64::new(0),
        }))
    }
}

/// Marks held every chunk `src` holds at one of the chunk's offsets, and
/// copies it to all its offsets in the part file (`same_file`: `src` is the
/// part file itself, so the offset it was found at is already right).
fn seed_from(part: &Part, src: &File, same_file: bool, manifest: &Manifest) -> std::io::Result<()> {
    let size = src.metadata()?.len();
    let mut held = lock(&part.held);
    let mut buf = Vec::new();
    // Manifest order reads the source sequentially.
    for (c, off) in manifest.chunks.iter().zip(manifest.offsets()) {
        if held.contains(&c.id) || off + u64::from(c.len) > size {
            continue;
        }
        buf.resize(c.len as usize, 0);
        src.read_exact_at(&mut buf, off)?;
        if ChunkId::of(&buf) != c.id {
            continue;
        }
        if let Some((_, offs)) = part.offsets.get(&c.id) {
            for o in offs {
                if !(same_file && *o == off) {
                    part.file.write_all_at(&buf, *o)?;
                }
            }
        }
        held.insert(c.id);
    }
    Ok(())
}

/// One object being written by [`FileSinkFactory`].
struct FileSink {
    part: Arc<Part>,
    written: AtomicU64,
}

impl ChunkSource for FileSink {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        if !lock(&self.part.held).contains(id) {
            return Err(format!("chunk {id} not written").into());
        }
        let (len, offs) = self
            .part
            .offsets
            .get(id)
            .ok_or_else(|| format!("chunk {id} not in manifest"))?;
        let off = offs
            .first()
            .ok_or_else(|| format!("chunk {id} has no offset"))?;
        let mut buf = vec![0u8; *len as usize];
        // The handle stays valid after the rename in `finish`.
        self.part.file.read_exact_at(&mut buf, *off)?;
        Ok(Bytes::from(buf))
    }
}

impl ChunkSink for FileSink {
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError> {
        let held = lock(&self.part.held);
        Ok(ids.iter().map(|id| held.contains(id)).collect())
    }

    fn put(&self, id: &ChunkId, data: Bytes) -> Result<(), BoxError> {
        let (len, offs) = self
            .part
            .offsets
            .get(id)
            .ok_or_else(|| format!("chunk {id} not in manifest"))?;
        if data.len() != *len as usize {
            return Err(format!("chunk {id} is {} bytes, manifest says {len}", data.len()).into());
        }
        for off in offs {
            self.part.file.write_all_at(&data, *off)?;
            self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        lock(&self.part.held).insert(*id);
        Ok(())
    }

    fn finish(&self, manifest: &Manifest) -> Result<u64, BoxError> {
        let mut finished = lock(&self.part.finished);
        if *finished {
            // Another connection for this transfer completed the object.
            return Ok(0);
        }
        {
            let held = lock(&self.part.held);
            if let Some(c) = manifest.chunks.iter().find(|c| !held.contains(&c.id)) {
                return Err(format!("chunk {} missing at finish", c.id).into());
            }
        }
        // Durable before visible: a crash never leaves a short file under
        // the final name.
        if self.part.durable {
            self.part.file.sync_all()?;
        }
        std::fs::rename(&self.part.part_path, &self.part.final_path)?;
        if self.part.durable {
            if let Some(dir) = self.part.final_path.parent() {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        *finished = true;
        Ok(self.written.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------
// A plain file as a source

/// Serves the fixed-size chunks of a local file. For sending files that are
/// not in a store, and for benchmarks.
pub struct FileSource {
    file: File,
    index: HashMap<ChunkId, (u64, u32)>,
}

impl FileSource {
    /// Reads `path` once, cutting it into `chunk_size` chunks and hashing
    /// them; returns the source and the file's manifest.
    pub fn open(path: &Path, chunk_size: usize) -> std::io::Result<(Arc<FileSource>, Manifest)> {
        use std::io::Read;
        let chunk_size = chunk_size.clamp(1, u32::MAX as usize);
        let mut file = File::open(path)?;
        let mut chunks = Vec::new();
        let mut index = HashMap::new();
        let mut buf = vec![0u8; chunk_size];
        let mut off = 0u64;
        loop {
            let mut n = 0;
            while n < chunk_size {
                let r = file.read(&mut buf[n..])?;
                if r == 0 {
                    break;
                }
                n += r;
            }
            if n == 0 {
                break;
            }
            let id = ChunkId::of(&buf[..n]);
            chunks.push(crate::manifest::ChunkRef { id, len: n as u32 });
            index.entry(id).or_insert((off, n as u32));
            off += n as u64;
            if n < chunk_size {
                break;
            }
        }
        Ok((Arc::new(FileSource { file, index }), Manifest { chunks }))
    }
}

impl ChunkSource for FileSource {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        let (off, len) = self
            .index
            .get(id)
            .ok_or_else(|| format!("chunk {id} not in file"))?;
        let mut buf = vec![0u8; *len as usize];
        self.file.read_exact_at(&mut buf, *off)?;
        Ok(Bytes::from(buf))
    }
}

// ---------------------------------------------------------------------------
// Discard

/// A sink factory whose sinks hold nothing and keep nothing: every chunk is
/// verified and relayed, then dropped. For measuring the chain itself.
/// Such a node cannot resupply a successor after a bypass.
#[derive(Default)]
pub struct DiscardSinkFactory {
    bytes: Arc<AtomicU64>,
}

impl DiscardSinkFactory {
    /// A fresh factory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes "written" by all its sinks.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

struct DiscardSink {
    total: Arc<AtomicU64>,
    written: AtomicU64,
}

impl SinkFactory for DiscardSinkFactory {
    fn open(&self, _info: &TransferInfo) -> Result<Arc<dyn ChunkSink>, BoxError> {
        Ok(Arc::new(DiscardSink {
            total: Arc::clone(&self.bytes),
            written: AtomicU64::new(0),
        }))
    }
}

impl ChunkSource for DiscardSink {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        Err(format!("discard sink keeps no chunks ({id})").into())
    }
}

impl ChunkSink for DiscardSink {
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError> {
        Ok(vec![false; ids.len()])
    }
    fn put(&self, _id: &ChunkId, data: Bytes) -> Result<(), BoxError> {
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.total.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn finish(&self, _manifest: &Manifest) -> Result<u64, BoxError> {
        Ok(self.written.load(Ordering::Relaxed))
    }
}
