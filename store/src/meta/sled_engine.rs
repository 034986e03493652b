//! sled engine: the design card's choice, kept as the alternative. One tree;
//! every committed transaction is followed by `flush`, because sled otherwise
//! syncs only periodically and we acknowledge only durable state.

use std::path::Path;

use parking_lot::Mutex;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{full_key, meta_err, KeyValue, MetaStore, MetaTxn, Table};
use crate::error::{Result, StoreError};

pub struct SledMeta {
    db: sled::Db,
    tree: sled::Tree,
    /// sled transactions are optimistic; serialising writers matches redb's
    /// semantics and avoids retry storms on hot reference-count keys.
    write_lock: Mutex<()>,
}

impl SledMeta {
    pub fn open(path: &Path) -> Result<SledMeta> {
        let db = sled::open(path).map_err(meta_err)?;
        let tree = db.open_tree("meta").map_err(meta_err)?;
        Ok(SledMeta {
            db,
            tree,
            write_lock: Mutex::new(()),
        })
    }
}

struct SledTxn<'a> {
    tx: &'a sled::transaction::TransactionalTree,
}

fn tx_err(e: sled::transaction::UnabortableTransactionError) -> StoreError {
    meta_err(e)
}

impl MetaTxn for SledTxn<'_> {
    fn get(&mut self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tx
            .get(full_key(t, key))
            .map_err(tx_err)?
            .map(|v| v.to_vec()))
    }
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx.insert(full_key(t, key), value).map_err(tx_err)?;
        Ok(())
    }
    fn delete(&mut self, t: Table, key: &[u8]) -> Result<()> {
        self.tx.remove(full_key(t, key)).map_err(tx_err)?;
        Ok(())
    }
}

impl MetaStore for SledMeta {
    fn engine(&self) -> &'static str {
        "sled"
    }

    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree
            .get(full_key(t, key))
            .map_err(meta_err)?
            .map(|v| v.to_vec()))
    }

    fn scan(&self, t: Table, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        let full_prefix = full_key(t, prefix);
        let from = full_key(t, start.max(prefix));
        let mut out = Vec::new();
        for item in self.tree.range(from..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(meta_err)?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn write(&self, f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<()>) -> Result<()> {
        let _guard = self.write_lock.lock();
        // sled wants an `Fn` closure (it may retry); ours is `FnMut`.
        let f = std::cell::RefCell::new(f);
        let outcome = self.tree.transaction(|tx| {
            let mut txn = SledTxn { tx };
            (f.borrow_mut())(&mut txn).map_err(ConflictableTransactionError::Abort)
        });
        match outcome {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(meta_err(e)),
        }
        self.db.flush().map_err(meta_err)?;
        Ok(())
    }
}
