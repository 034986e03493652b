//! redb engine: the default. One table of byte keys; redb commits are
//! durable (fsync) by default, so `write` returning means the change survives
//! a crash.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::{full_key, meta_err, KeyValue, MetaStore, MetaTxn, Table};
use crate::error::Result;

const META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");

pub struct RedbMeta {
    db: Database,
}

impl RedbMeta {
    pub fn open(path: &Path) -> Result<RedbMeta> {
        let db = Database::create(path).map_err(meta_err)?;
        // Create the table up front so read transactions never see it missing.
        let tx = db.begin_write().map_err(meta_err)?;
        tx.open_table(META).map_err(meta_err)?;
        tx.commit().map_err(meta_err)?;
        Ok(RedbMeta { db })
    }
}

struct RedbTxn<'a> {
    table: redb::Table<'a, &'static [u8], &'static [u8]>,
}

impl MetaTxn for RedbTxn<'_> {
    fn get(&mut self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = full_key(t, key);
        Ok(self
            .table
            .get(k.as_slice())
            .map_err(meta_err)?
            .map(|v| v.value().to_vec()))
    }
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<()> {
        let k = full_key(t, key);
        self.table.insert(k.as_slice(), value).map_err(meta_err)?;
        Ok(())
    }
    fn delete(&mut self, t: Table, key: &[u8]) -> Result<()> {
        let k = full_key(t, key);
        self.table.remove(k.as_slice()).map_err(meta_err)?;
        Ok(())
    }
}

impl MetaStore for RedbMeta {
    fn engine(&self) -> &'static str {
        "redb"
    }

    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(meta_err)?;
        let table = tx.open_table(META).map_err(meta_err)?;
        let k = full_key(t, key);
        Ok(table
            .get(k.as_slice())
            .map_err(meta_err)?
            .map(|v| v.value().to_vec()))
    }

    fn scan(&self, t: Table, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        let tx = self.db.begin_read().map_err(meta_err)?;
        let table = tx.open_table(META).map_err(meta_err)?;
        let full_prefix = full_key(t, prefix);
        let from = full_key(t, start.max(prefix));
        let mut out = Vec::new();
        for item in table.range(from.as_slice()..).map_err(meta_err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(meta_err)?;
            let k = k.value();
            if !k.starts_with(&full_prefix) {
                break;
            }
            out.push((k[1..].to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn write(&self, f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<()>) -> Result<()> {
        let tx = self.db.begin_write().map_err(meta_err)?;
        {
            let table = tx.open_table(META).map_err(meta_err)?;
            let mut txn = RedbTxn { table };
            if let Err(e) = f(&mut txn) {
                drop(txn);
                tx.abort().map_err(meta_err)?;
                return Err(e);
            }
        }
        tx.commit().map_err(meta_err)
    }
}
