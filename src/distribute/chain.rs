//! Glue between strato's store and `chain-broadcast` (thesis §3.5.1): a
//! [`ChunkSource`] over a store (or over a remote repository's chunk API)
//! for the sender, and a [`SinkFactory`] that makes each received image an
//! object of the node's own store, so a hypervisor's cache deduplicates new
//! versions against old ones and announces what it already holds.
//!
//! Two mappings matter:
//! - **Names.** A transfer is named `BUCKET/KEY` ([`transfer_name`]). A
//!   store node commits the object under that bucket and key; the store
//!   validates both and they never touch the filesystem (objects live in
//!   segments and a metadata database). A file node writes
//!   `OUT_DIR/<last path component of KEY>`, and that file name goes through
//!   [`FileSinkFactory`]'s own check, which refuses `..`, `/` and NUL.
//! - **Zero runs.** The store keeps runs of zero bytes as manifest entries
//!   with the reserved all-zero id and no stored chunk; the chain only knows
//!   real BLAKE3 ids that every hop verifies. A zero run therefore becomes
//!   pieces of at most [`ZERO_PIECE`] bytes whose id is the hash of that
//!   many zeros. Every store node recognises those ids from their lengths
//!   and announces them as held, so zero runs are never sent as bytes to a
//!   store node, and commits them back as zero runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use chain_broadcast::{
    BoxError, ChunkRef, ChunkSink, ChunkSource, FileSinkFactory, Manifest, SinkFactory,
    TransferInfo,
};
use md5::Digest;

use crate::store::model::{ManifestEntry, ObjectMeta};
use crate::store::{ChunkId, Store, StoreError};
use chunk_api::ManifestDoc;

/// Largest piece a zero run is cut into on the wire: small enough for any
/// frame limit, large enough that a 1 GiB run is a thousand manifest entries.
pub const ZERO_PIECE: u32 = 1 << 20;

/// Largest zero-run entry committed into a store (the writer's own limit).
const MAX_ZERO_ENTRY: u64 = 1 << 30;

/// Profile recorded for objects that arrived by chain: their chunks are the
/// repository's, whatever profile cut them there.
pub const CHAIN_PROFILE: &str = "chain";

/// Errors of the store glue.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("transfer name {0:?} is not BUCKET/KEY")]
    Name(String),
    #[error("chunk API: {0}")]
    Remote(#[from] chunk_api::ClientError),
    #[error("image source: {0}")]
    Source(#[from] chunk_api::SourceError),
    #[error("object incomplete at finish: chunk {0} missing")]
    Incomplete(String),
    #[error("{0}")]
    Write(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere does not make a digest or a cache wrong.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn to_chain(id: &ChunkId) -> chain_broadcast::ChunkId {
    chain_broadcast::ChunkId(id.0)
}

fn to_store(id: &chain_broadcast::ChunkId) -> ChunkId {
    ChunkId(id.0)
}

/// `BUCKET/KEY`, the name a transfer carries.
pub fn transfer_name(bucket: &str, key: &str) -> String {
    format!("{bucket}/{key}")
}

/// The bucket and key of a transfer name. The store checks both again.
pub fn parse_transfer_name(name: &str) -> Result<(&str, &str), ChainError> {
    match name.split_once('/') {
        Some((b, k)) if !b.is_empty() && !k.is_empty() => Ok((b, k)),
        _ => Err(ChainError::Name(name.to_string())),
    }
}

/// Ids of all-zero chunks by length, computed once per length.
#[derive(Default)]
struct ZeroIds(Mutex<HashMap<u32, chain_broadcast::ChunkId>>);

impl ZeroIds {
    fn id(&self, len: u32) -> chain_broadcast::ChunkId {
        if let Some(id) = lock(&self.0).get(&len) {
            return *id;
        }
        let id = chain_broadcast::ChunkId::of(&vec![0u8; len as usize]);
        lock(&self.0).insert(len, id);
        id
    }
}

/// The chain manifest of a store manifest, zero runs cut into
/// [`ZERO_PIECE`]s, and the set of ids that stand for zeros (with lengths).
pub fn chain_manifest(
    entries: &[ManifestEntry],
) -> (Manifest, HashMap<chain_broadcast::ChunkId, u32>) {
    let zeros = ZeroIds::default();
    let mut zero_ids = HashMap::new();
    let mut chunks = Vec::with_capacity(entries.len());
    for e in entries {
        if e.id.is_zero_run() {
            let mut left = e.len;
            while left > 0 {
                let len = left.min(ZERO_PIECE);
                let id = zeros.id(len);
                zero_ids.insert(id, len);
                chunks.push(ChunkRef { id, len });
                left -= len;
            }
        } else {
            chunks.push(ChunkRef {
                id: to_chain(&e.id),
                len: e.len,
            });
        }
    }
    (Manifest::new(chunks), zero_ids)
}

// ---------------------------------------------------------------------------
// Sources

/// Reads the chunks of one object from any [`chunk_api::ChunkSource`]: the
/// repository's own store (`strato propagate` on the repository machine)
/// or a repository's chunk API (`--endpoint`). The chain calls `get` on
/// blocking threads, so blocking on the runtime handle here is allowed and
/// keeps the async workers free.
pub struct ChainSource {
    source: Arc<dyn chunk_api::ChunkSource>,
    handle: tokio::runtime::Handle,
    zeros: HashMap<chain_broadcast::ChunkId, u32>,
}

impl ChainSource {
    /// The source, the chain manifest and the manifest of `bucket/key`.
    /// Call inside the runtime that will run the propagation.
    pub async fn open(
        source: Arc<dyn chunk_api::ChunkSource>,
        bucket: &str,
        key: &str,
    ) -> Result<(Arc<ChainSource>, Manifest, ManifestDoc), ChainError> {
        let doc = source.manifest(bucket, key).await?;
        let (src, manifest) = ChainSource::from_doc(source, &doc);
        Ok((src, manifest, doc))
    }

    /// Over a manifest already fetched (the one a session ticket was
    /// signed over, so the chain sends exactly that version).
    pub fn from_doc(
        source: Arc<dyn chunk_api::ChunkSource>,
        doc: &ManifestDoc,
    ) -> (Arc<ChainSource>, Manifest) {
        let (manifest, zeros) = chain_manifest(&doc.entries());
        let src = ChainSource {
            source,
            handle: tokio::runtime::Handle::current(),
            zeros,
        };
        (Arc::new(src), manifest)
    }
}

impl ChunkSource for ChainSource {
    fn get(&self, id: &chain_broadcast::ChunkId) -> Result<Bytes, BoxError> {
        if let Some(len) = self.zeros.get(id) {
            return Ok(Bytes::from(vec![0u8; *len as usize]));
        }
        let sid = to_store(id);
        match self.handle.block_on(self.source.chunk(sid))? {
            Some(b) => Ok(b),
            None => Err(format!("the image source lacks chunk {sid}").into()),
        }
    }
}

// ---------------------------------------------------------------------------
// Store sinks (chain-agent --store)

/// Makes each received transfer an object of `store`.
pub struct StoreSinkFactory {
    store: Store,
    owner: String,
}

impl StoreSinkFactory {
    /// Buckets missing on the node are created with `owner`.
    pub fn new(store: Store, owner: impl Into<String>) -> Self {
        StoreSinkFactory {
            store,
            owner: owner.into(),
        }
    }
}

impl SinkFactory for StoreSinkFactory {
    fn open(&self, info: &TransferInfo) -> Result<Arc<dyn ChunkSink>, BoxError> {
        let (bucket, key) = parse_transfer_name(&info.name)?;
        match self.store.create_bucket(bucket, &self.owner) {
            Ok(())
            | Err(StoreError::BucketAlreadyOwnedByYou(_) | StoreError::BucketAlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let manifest = Arc::clone(&info.manifest);
        let lengths = manifest.lengths();
        Ok(Arc::new(StoreSink {
            store: self.store.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            manifest,
            lengths,
            zeros: ZeroIds::default(),
            writers: Writers::start(&self.store)?,
            md5: Mutex::new(Md5Cursor {
                ctx: md5::Md5::new(),
                pos: 0,
            }),
        }))
    }
}

/// MD5 of the object fed in manifest order as chunks arrive, so the ETag
/// is ready at `finish` without reading the image back (chunks normally
/// arrive in order; gaps are filled from the store at `finish`).
struct Md5Cursor {
    ctx: md5::Md5,
    /// Next manifest entry to feed.
    pos: usize,
}

/// Threads storing the chunks of one sink. Chunks go in unsynced: `finish`
/// commits the manifest with `Store::commit_manifest`, which makes every
/// referenced chunk durable first (one fdatasync per segment, not one per
/// chunk, which capped a single writer far below a 1 Gbit/s link).
const WRITERS: usize = 4;

struct Writers {
    /// Closed (dropped) with the sink, which ends the threads.
    tx: Option<std::sync::mpsc::SyncSender<(chain_broadcast::ChunkId, Bytes)>>,
    shared: Arc<WriterState>,
}

#[derive(Default)]
struct WriterState {
    inner: Mutex<Pending>,
    done: std::sync::Condvar,
    written: AtomicU64,
}

#[derive(Default)]
struct Pending {
    /// Chunks handed to the writers and not yet stored; readable meanwhile
    /// (a bypass may ask this node to resupply its successor).
    chunks: HashMap<chain_broadcast::ChunkId, Bytes>,
    /// The first failure; every later put and the finish report it.
    error: Option<String>,
}

impl Writers {
    fn start(store: &Store) -> Result<Writers, BoxError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(chain_broadcast::ChunkId, Bytes)>(WRITERS);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(WriterState::default());
        for i in 0..WRITERS {
            let (rx, shared, store) = (Arc::clone(&rx), Arc::clone(&shared), store.clone());
            std::thread::Builder::new()
                .name(format!("chain-put-{i}"))
                .spawn(move || loop {
                    let next = lock(&rx).recv();
                    let Ok((id, data)) = next else { return };
                    let r = store.put_chunk_unsynced(&to_store(&id), &data);
                    let mut p = lock(&shared.inner);
                    p.chunks.remove(&id);
                    match r {
                        Ok(true) => {
                            shared
                                .written
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(e) => {
                            p.error
                                .get_or_insert_with(|| format!("storing chunk {id}: {e}"));
                        }
                    }
                    shared.done.notify_all();
                })?;
        }
        Ok(Writers {
            tx: Some(tx),
            shared,
        })
    }

    fn put(&self, id: chain_broadcast::ChunkId, data: Bytes) -> Result<(), ChainError> {
        {
            let mut p = lock(&self.shared.inner);
            if let Some(e) = &p.error {
                return Err(ChainError::Write(e.clone()));
            }
            if p.chunks.insert(id, data.clone()).is_some() {
                return Ok(()); // already on its way
            }
        }
        // Blocks while WRITERS chunks wait: the chain's backpressure.
        let sent = self.tx.as_ref().map(|tx| tx.send((id, data)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(ChainError::Write("chunk writers stopped".into())),
        }
    }

    fn pending(&self, id: &chain_broadcast::ChunkId) -> Option<Bytes> {
        lock(&self.shared.inner).chunks.get(id).cloned()
    }

    /// Waits until every chunk handed over is stored (or one failed).
    fn drain(&self) -> Result<u64, ChainError> {
        let mut p = lock(&self.shared.inner);
        while p.error.is_none() && !p.chunks.is_empty() {
            p = self
                .shared
                .done
                .wait(p)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        match &p.error {
            Some(e) => Err(ChainError::Write(e.clone())),
            None => Ok(self.shared.written.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        // Closing the channel ends the threads once they drain it.
        self.tx.take();
    }
}

struct StoreSink {
    store: Store,
    bucket: String,
    key: String,
    manifest: Arc<Manifest>,
    lengths: HashMap<chain_broadcast::ChunkId, u32>,
    zeros: ZeroIds,
    writers: Writers,
    md5: Mutex<Md5Cursor>,
}

impl StoreSink {
    fn is_zero(&self, id: &chain_broadcast::ChunkId) -> bool {
        match self.lengths.get(id) {
            Some(len) => self.zeros.id(*len) == *id,
            None => false,
        }
    }

    /// Feeds the digest as far as the chunks present allow. `fresh` is a
    /// chunk just stored, used without reading it back.
    fn advance(
        &self,
        fresh: Option<(&chain_broadcast::ChunkId, &Bytes)>,
    ) -> Result<(), ChainError> {
        let mut cur = lock(&self.md5);
        while let Some(c) = self.manifest.chunks.get(cur.pos) {
            match fresh {
                Some((id, data)) if *id == c.id => cur.ctx.update(data),
                _ if self.is_zero(&c.id) => cur.ctx.update(vec![0u8; c.len as usize]),
                _ => {
                    let sid = to_store(&c.id);
                    if !self.store.has_chunk(&sid) {
                        break;
                    }
                    let data = self.store.read_chunk(&sid)?;
                    cur.ctx.update(&data);
                }
            }
            cur.pos += 1;
        }
        Ok(())
    }

    /// Store entries: zero pieces merged back into zero runs.
    fn entries(&self) -> Vec<ManifestEntry> {
        let mut out: Vec<ManifestEntry> = Vec::with_capacity(self.manifest.len());
        for c in &self.manifest.chunks {
            if self.is_zero(&c.id) {
                if let Some(last) = out.last_mut() {
                    if last.id.is_zero_run()
                        && u64::from(last.len) + u64::from(c.len) <= MAX_ZERO_ENTRY
                    {
                        last.len += c.len;
                        continue;
                    }
                }
                out.push(ManifestEntry {
                    id: ChunkId::ZERO_RUN,
                    len: c.len,
                });
            } else {
                out.push(ManifestEntry {
                    id: to_store(&c.id),
                    len: c.len,
                });
            }
        }
        out
    }
}

impl ChunkSource for StoreSink {
    fn get(&self, id: &chain_broadcast::ChunkId) -> Result<Bytes, BoxError> {
        if self.is_zero(id) {
            let len = self.lengths.get(id).copied().unwrap_or(0);
            return Ok(Bytes::from(vec![0u8; len as usize]));
        }
        if let Some(data) = self.writers.pending(id) {
            return Ok(data);
        }
        Ok(self.store.read_chunk(&to_store(id))?)
    }
}

impl ChunkSink for StoreSink {
    fn has(&self, ids: &[chain_broadcast::ChunkId]) -> Result<Vec<bool>, BoxError> {
        Ok(ids
            .iter()
            .map(|id| {
                self.is_zero(id)
                    || self.store.has_chunk(&to_store(id))
                    || self.writers.pending(id).is_some()
            })
            .collect())
    }

    fn put(&self, id: &chain_broadcast::ChunkId, data: Bytes) -> Result<(), BoxError> {
        if !self.is_zero(id) {
            self.writers.put(*id, data.clone())?;
        }
        self.advance(Some((id, &data)))?;
        Ok(())
    }

    fn finish(&self, manifest: &Manifest) -> Result<u64, BoxError> {
        let written = self.writers.drain()?;
        self.advance(None)?;
        let etag = {
            let cur = lock(&self.md5);
            if let Some(c) = self.manifest.chunks.get(cur.pos) {
                return Err(ChainError::Incomplete(c.id.to_hex()).into());
            }
            hex::encode(cur.ctx.clone().finalize())
        };
        let meta = ObjectMeta {
            size: manifest.size(),
            etag,
            profile: CHAIN_PROFILE.to_string(),
            parts: 0,
        };
        self.store
            .commit_object(&self.bucket, &self.key, meta, &self.entries())?;
        tracing::info!(bucket = %self.bucket, key = %self.key, size = manifest.size(), "chain object committed");
        Ok(written)
    }

    fn abort(&self) {
        // Stored chunks stay (unreferenced until a later attempt commits, or
        // GC reclaims them after its grace period); no object appears.
        tracing::warn!(bucket = %self.bucket, key = %self.key, "chain transfer aborted");
    }
}

// ---------------------------------------------------------------------------
// File sinks (chain-agent --out-dir)

/// Writes `OUT_DIR/<last component of KEY>` through [`FileSinkFactory`],
/// whose own name check is the only way a transfer name reaches a path.
pub struct FileNameSinkFactory {
    inner: FileSinkFactory,
}

impl FileNameSinkFactory {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        FileNameSinkFactory {
            inner: FileSinkFactory::new(out_dir),
        }
    }

    /// The file name a transfer is written to (checked again by the inner
    /// factory). Names that are not `BUCKET/KEY` pass unchanged.
    pub fn file_name(transfer: &str) -> &str {
        match parse_transfer_name(transfer) {
            Ok((_, key)) => key.rsplit('/').next().unwrap_or(key),
            Err(_) => transfer,
        }
    }
}

impl SinkFactory for FileNameSinkFactory {
    fn open(&self, info: &TransferInfo) -> Result<Arc<dyn ChunkSink>, BoxError> {
        let info = TransferInfo {
            name: Self::file_name(&info.name).to_string(),
            ..info.clone()
        };
        self.inner.open(&info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_runs_become_verifiable_pieces() {
        let entries = [
            ManifestEntry {
                id: ChunkId::ZERO_RUN,
                len: 2 * ZERO_PIECE + 5,
            },
            ManifestEntry {
                id: ChunkId::of(b"abc"),
                len: 3,
            },
        ];
        let (m, zeros) = chain_manifest(&entries);
        assert_eq!(m.len(), 4);
        assert_eq!(m.size(), u64::from(2 * ZERO_PIECE + 8));
        assert_eq!(zeros.len(), 2);
        assert_eq!(m.chunks[2].id, chain_broadcast::ChunkId::of(&[0u8; 5]));
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_transfer_name("b/dir/k.img").ok(),
            Some(("b", "dir/k.img"))
        );
        assert!(parse_transfer_name("nokey").is_err());
        assert!(parse_transfer_name("/k").is_err());
        assert_eq!(FileNameSinkFactory::file_name("b/dir/k.img"), "k.img");
        assert_eq!(FileNameSinkFactory::file_name("b/dir/.."), "..");
        assert!(chain_broadcast::check_file_name(FileNameSinkFactory::file_name("b/x/")).is_err());
    }

    /// Two store nodes in this process: zero runs never cross the wire to
    /// them, the received object reads back identical with an MD5 ETag, and
    /// its manifest keeps zero runs as zero runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_nodes_never_receive_zero_runs() {
        use crate::store::{ProfileChoice, StoreConfig};
        use chain_broadcast::{propagate, Node, Options, ServeOptions};

        let tmp = tempfile::tempdir().unwrap();
        let open =
            |name: &str| Store::open(&tmp.path().join(name), StoreConfig::default()).unwrap();
        let repo = open("repo");
        repo.create_bucket("bkt", "admin").unwrap();
        let mut data = vec![0u8; 6 << 20];
        let mut x: u32 = 1;
        for (i, v) in data.iter_mut().enumerate() {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // The middle 3 MiB stay zero.
            if !(2 << 20..5 << 20).contains(&i) {
                *v = (x >> 24) as u8;
            }
        }
        repo.put_reader(
            "bkt",
            "k/img",
            &data[..],
            ProfileChoice::Auto,
            Vec::new(),
            |_| {},
        )
        .unwrap();
        let (src, manifest, _) = ChainSource::open(Arc::new(repo), "bkt", "k/img")
            .await
            .unwrap();
        let nodes_stores = [open("n1"), open("n2")];
        let mut nodes = Vec::new();
        for st in &nodes_stores {
            let f: Arc<dyn SinkFactory> = Arc::new(StoreSinkFactory::new(st.clone(), "admin"));
            nodes.push(
                Node::spawn("127.0.0.1:0".parse().unwrap(), f, ServeOptions::default())
                    .await
                    .unwrap(),
            );
        }
        let addrs: Vec<_> = nodes.iter().map(chain_broadcast::Node::addr).collect();
        let src: Arc<dyn ChunkSource> = src;
        let report = propagate(
            src,
            "bkt/k/img",
            Arc::new(manifest),
            &addrs,
            &Options::default(),
        )
        .await
        .unwrap();
        assert!(report.all_ok(), "{report:?}");
        // 3 MiB of data plus the chunks straddling the run's edges (the chunker
        // cuts a zero run only on block edges inside it), far below the 6 MiB.
        let nonzero = (3u64 << 20) + (512 << 10);
        assert!(report.bytes_sent <= nonzero, "{report:?}");
        for n in &report.nodes {
            assert!(n.bytes_received <= nonzero, "{report:?}");
        }
        let md5 = hex::encode(md5::Md5::digest(&data));
        for st in &nodes_stores {
            let (rec, entries) = st.manifest("bkt", "k/img").unwrap();
            assert_eq!(rec.etag, md5);
            assert_eq!(rec.size, data.len() as u64);
            assert!(entries.iter().any(|e| e.id.is_zero_run()));
            let mut back = Vec::new();
            for e in &entries {
                if e.id.is_zero_run() {
                    back.extend(std::iter::repeat_n(0u8, e.len as usize));
                } else {
                    back.extend_from_slice(&st.read_chunk(&e.id).unwrap());
                }
            }
            assert!(back == data);
        }
    }
}
