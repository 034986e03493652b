//! Metadata behind one small trait: buckets, manifests, per-chunk reference
//! state and multipart uploads. Three engines implement it (redb, the default,
//! sled, and PostgreSQL for a repository shared by several frontends);
//! `tests` runs one suite against all of them.
//!
//! Each engine keeps a single ordered key space; a [`Table`] is a one-byte key
//! prefix. That keeps both engines symmetric (sled transactions span one tree
//! cheaply) and makes a transaction over several "tables" trivially atomic.

mod postgres_engine;
mod redb_engine;
mod sled_engine;

use std::path::Path;

pub use postgres_engine::{redact_url, PostgresMeta, SCHEMA_VERSION};
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
    /// upload id \0 part number (big endian) -> PartAttrsRecord (see model.rs)
    PartAttrs = b'r',
    /// bucket \0 key -> ObjectParts: part sizes of a multipart object
    ObjectParts = b'q',
    /// bucket name -> BucketOptions (see blocks.rs)
    BucketOptions = b's',
    /// 4 KiB block id -> chunk id + offset (see blocks.rs)
    Blocks = b'k',
    /// shared (s3) mode: chunk id -> segment object id, offset, length (see shared.rs)
    ChunkLocs = b'l',
    /// shared (s3) mode: segment object id (big endian) -> heartbeat ms of the
    /// write that uploaded it and has not committed it yet (see shared.rs)
    Inflight = b'i',
    /// time (ms, big endian) -> History sample of the web console (see history.rs), bounded
    History = b'h',
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
    /// The values of `keys` (in their order; `None` where absent). Engines
    /// over a network answer it in one round trip.
    fn get_many(&self, t: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(t, k)).collect()
    }
    /// Up to `limit` entries of table `t` whose key starts with `prefix` and is
    /// `>= start` (start is a full key within the table), in key order.
    fn scan(&self, t: Table, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<KeyValue>>;
    /// Run `f` in one write transaction and make it durable before returning.
    /// Write transactions are serialised. `f` may run more than once (sled
    /// retries on conflict), so it must only act through the transaction.
    /// An error from `f` rolls everything back.
    fn write(&self, f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<()>) -> Result<()>;
    /// Check (or, in a new repository, record) the store's format marker
    /// where this engine keeps the repository. The embedded engines live in
    /// the data directory, whose FORMAT file the store checks itself.
    fn check_format(&self, _format: &str) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Redb,
    Sled,
    /// PostgreSQL at `StoreConfig::meta_url`, shared by several frontends.
    Postgres,
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "redb" => Ok(Engine::Redb),
            "sled" => Ok(Engine::Sled),
            "postgres" | "postgresql" => Ok(Engine::Postgres),
            other => Err(format!(
                "unknown metadata engine {other:?} (redb, sled or postgres)"
            )),
        }
    }
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Sled => "sled",
            Engine::Postgres => "postgres",
        }
    }
}

/// Open the metadata of the store in `dir`: the embedded engines keep it
/// there, PostgreSQL at `url` (required for it, refused for the others so a
/// url given by mistake is not silently ignored).
pub fn open(engine: Engine, url: Option<&str>, dir: &Path) -> Result<Box<dyn MetaStore>> {
    Ok(match (engine, url) {
        (Engine::Redb, None) => Box::new(RedbMeta::open(&dir.join("meta.redb"))?),
        (Engine::Sled, None) => Box::new(SledMeta::open(&dir.join("meta.sled"))?),
        (Engine::Postgres, Some(url)) => Box::new(PostgresMeta::open(url)?),
        (Engine::Postgres, None) => {
            return Err(StoreError::InvalidArgument(
                "the postgres metadata engine needs a url ([meta] url, --meta-url or \
                 STRATO_META_URL)"
                    .into(),
            ))
        }
        (e @ (Engine::Redb | Engine::Sled), Some(_)) => {
            return Err(StoreError::InvalidArgument(format!(
                "a metadata url is set but the engine is {}; set the engine to postgres",
                e.name()
            )))
        }
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
mod store_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Engine; 3] = [Engine::Redb, Engine::Sled, Engine::Postgres];

    /// A fresh database on the shared PostgreSQL testbed for the postgres
    /// engine, nothing for the embedded ones.
    pub(crate) fn fresh_url(e: Engine) -> Option<String> {
        (e == Engine::Postgres).then(|| {
            let name = format!("meta_{:016x}", rand::random::<u64>());
            strato_testbed::shared_postgres().create_database(&name)
        })
    }

    fn engines() -> Vec<(tempfile::TempDir, Box<dyn MetaStore>)> {
        ALL.into_iter()
            .map(|e| {
                let d = tempfile::tempdir().unwrap();
                let m = open(e, fresh_url(e).as_deref(), d.path()).unwrap();
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
        for e in ALL {
            let d = tempfile::tempdir().unwrap();
            let url = fresh_url(e);
            {
                let m = open(e, url.as_deref(), d.path()).unwrap();
                m.write(&mut |tx| tx.put(Table::Misc, b"k", b"v")).unwrap();
            }
            let m = open(e, url.as_deref(), d.path()).unwrap();
            assert_eq!(
                m.get(Table::Misc, b"k").unwrap().as_deref(),
                Some(&b"v"[..])
            );
        }
    }

    #[test]
    fn get_many_answers_in_key_order_with_gaps_and_repeats() {
        for (_d, m) in engines() {
            m.write(&mut |tx| {
                tx.put(Table::Chunks, b"a", b"1")?;
                tx.put(Table::Chunks, b"c", b"3")?;
                tx.put(Table::Blocks, b"b", b"other table")
            })
            .unwrap();
            let got = m
                .get_many(Table::Chunks, &[b"c", b"b", b"a", b"c", b""])
                .unwrap();
            let want: Vec<Option<Vec<u8>>> = vec![
                Some(b"3".to_vec()),
                None,
                Some(b"1".to_vec()),
                Some(b"3".to_vec()),
                None,
            ];
            assert_eq!(got, want, "{}", m.engine());
            assert!(m.get_many(Table::Chunks, &[]).unwrap().is_empty());
        }
    }

    #[test]
    fn scan_edges_match_across_engines() {
        // Keys with 0x00 and 0xff bytes at the prefix edge, and a prefix that
        // is a whole key: every engine must return the same pages.
        let keys: [&[u8]; 6] = [b"p", b"p\0", b"p\xff", b"p\xff\xff", b"pa", b"q"];
        let mut answers = Vec::new();
        for (_d, m) in engines() {
            m.write(&mut |tx| {
                for k in keys {
                    tx.put(Table::Parts, k, k)?;
                }
                tx.put(Table::Uploads, b"p", b"x")
            })
            .unwrap();
            let mut got = Vec::new();
            for (prefix, start, limit) in [
                (&b"p"[..], &b""[..], 10),
                (b"p\xff", b"", 10),
                (b"p", b"p\xff", 10),
                (b"", b"pa", 2),
                (b"p", b"p", 3),
            ] {
                got.push(m.scan(Table::Parts, prefix, start, limit).unwrap());
            }
            answers.push((m.engine(), got));
        }
        let (first, want) = &answers[0];
        assert_eq!(want[0].len(), 5);
        assert_eq!(want[1].len(), 2);
        for (engine, got) in &answers[1..] {
            assert_eq!(got, want, "{engine} differs from {first}");
        }
    }
}
