//! Metadata behind one small trait: buckets, manifests, per-chunk reference
//! state and multipart uploads. Two engines implement it (redb, the default,
//! and sled); `tests` runs one suite against both.
//!
//! Each engine keeps a single ordered key space; a [`Table`] is a one-byte key
//! prefix. That keeps both engines symmetric (sled transactions span one tree
//! cheaply) and makes a transaction over several "tables" trivially atomic.

mod redb_engine;
mod sled_engine;

use std::path::Path;

pub use redb_engine::RedbMeta;
pub use sled_engine::SledMeta;

use super::error::{Result, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Table {
    /// format marker and other single values
    Misc = b'm',
    /// bucket name -> BucketRecord
    Buckets = b'b',
    /// bucket \0 key -> ObjectRecord
    Objects = b'o',
    /// bucket \0 key -> Manifest (the chunk list)
    Manifests = b'f',
    /// chunk id -> ChunkState (reference count, deletable-since)
    Chunks = b'c',
    /// upload id -> UploadRecord
    Uploads = b'u',
    /// upload id \0 part number (big endian) -> PartRecord
    Parts = b'p',
    /// bucket name -> BucketOptions (see blocks.rs)
    BucketOptions = b's',
    /// 4 KiB block id -> chunk id + offset (see blocks.rs)
    Blocks = b'k',
}

pub(crate) fn full_key(t: Table, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(t as u8);
    k.extend_from_slice(key);
    k
}

/// Operations inside one atomic, durable write transaction.
pub trait MetaTxn {
    fn get(&mut self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<()>;
    fn delete(&mut self, t: Table, key: &[u8]) -> Result<()>;
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

pub trait MetaStore: Send + Sync {
    fn engine(&self) -> &'static str;
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` entries of table `t` whose key starts with `prefix` and is
    /// `>= start` (start is a full key within the table), in key order.
    fn scan(&self, t: Table, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<KeyValue>>;
    /// Run `f` in one write transaction and make it durable before returning.
    /// Write transactions are serialised. `f` may run more than once (sled
    /// retries on conflict), so it must only act through the transaction.
    /// An error from `f` rolls everything back.
    fn write(&self, f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<()>) -> Result<()>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Redb,
    Sled,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "redb" => Ok(Engine::Redb),
            "sled" => Ok(Engine::Sled),
            other => Err(format!("unknown metadata engine {other:?} (redb or sled)")),
        }
    }
}

pub fn open(engine: Engine, dir: &Path) -> Result<Box<dyn MetaStore>> {
    Ok(match engine {
        Engine::Redb => Box::new(RedbMeta::open(&dir.join("meta.redb"))?),
        Engine::Sled => Box::new(SledMeta::open(&dir.join("meta.sled"))?),
    })
}

pub(crate) fn meta_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Meta(e.to_string())
}

/// Scan a whole prefix in pages, calling `f` for each entry.
pub fn for_each(
    meta: &dyn MetaStore,
    t: Table,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut start = prefix.to_vec();
    loop {
        let page = meta.scan(t, prefix, &start, 1024)?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        let mut next = last.clone();
        next.push(0);
        for (k, v) in &page {
            f(k, v)?;
        }
        if page.len() < 1024 {
            return Ok(());
        }
        start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engines() -> Vec<(tempfile::TempDir, Box<dyn MetaStore>)> {
        [Engine::Redb, Engine::Sled]
            .into_iter()
            .map(|e| {
                let d = tempfile::tempdir().unwrap();
                let m = open(e, d.path()).unwrap();
                (d, m)
            })
            .collect()
    }

    #[test]
    fn put_get_scan_delete() {
        for (_d, m) in engines() {
            m.write(&mut |tx| {
                tx.put(Table::Objects, b"b\0a", b"1")?;
                tx.put(Table::Objects, b"b\0c", b"3")?;
                tx.put(Table::Objects, b"b\0b", b"2")?;
                tx.put(Table::Objects, b"c\0a", b"x")?;
                tx.put(Table::Buckets, b"b", b"bucket")
            })
            .unwrap();
            assert_eq!(
                m.get(Table::Objects, b"b\0b").unwrap().as_deref(),
                Some(&b"2"[..])
            );
            assert_eq!(m.get(Table::Buckets, b"b\0b").unwrap(), None);
            let all = m.scan(Table::Objects, b"b\0", b"b\0", 10).unwrap();
            let keys: Vec<_> = all.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(
                keys,
                vec![b"b\0a".to_vec(), b"b\0b".to_vec(), b"b\0c".to_vec()],
                "{}",
                m.engine()
            );
            let after = m.scan(Table::Objects, b"b\0", b"b\0b\0", 10).unwrap();
            assert_eq!(after.len(), 1);
            let limited = m.scan(Table::Objects, b"", b"", 2).unwrap();
            assert_eq!(limited.len(), 2);
            m.write(&mut |tx| tx.delete(Table::Objects, b"b\0a"))
                .unwrap();
            assert_eq!(m.get(Table::Objects, b"b\0a").unwrap(), None);
        }
    }

    #[test]
    fn failed_transaction_changes_nothing() {
        for (_d, m) in engines() {
            m.write(&mut |tx| tx.put(Table::Chunks, b"k", b"v1"))
                .unwrap();
            let r = m.write(&mut |tx| {
                tx.put(Table::Chunks, b"k", b"v2")?;
                tx.put(Table::Chunks, b"other", b"x")?;
                Err(StoreError::PreconditionFailed)
            });
            assert!(
                matches!(r, Err(StoreError::PreconditionFailed)),
                "{}",
                m.engine()
            );
            assert_eq!(
                m.get(Table::Chunks, b"k").unwrap().as_deref(),
                Some(&b"v1"[..])
            );
            assert_eq!(m.get(Table::Chunks, b"other").unwrap(), None);
        }
    }

    #[test]
    fn reads_inside_transaction_see_its_writes() {
        for (_d, m) in engines() {
            m.write(&mut |tx| {
                tx.put(Table::Chunks, b"k", b"v")?;
                assert_eq!(tx.get(Table::Chunks, b"k")?.as_deref(), Some(&b"v"[..]));
                Ok(())
            })
            .unwrap();
        }
    }

    #[test]
    fn survives_reopen() {
        for e in [Engine::Redb, Engine::Sled] {
            let d = tempfile::tempdir().unwrap();
            {
                let m = open(e, d.path()).unwrap();
                m.write(&mut |tx| tx.put(Table::Misc, b"k", b"v")).unwrap();
            }
            let m = open(e, d.path()).unwrap();
            assert_eq!(
                m.get(Table::Misc, b"k").unwrap().as_deref(),
                Some(&b"v"[..])
            );
        }
    }
}
