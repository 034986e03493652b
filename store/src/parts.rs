//! Reading the per-part extras of multipart uploads and objects:
//! `Table::PartAttrs` (an uploaded part's opaque attributes) and
//! `Table::ObjectParts` (a completed object's part sizes and attributes).
//! Both are tied to the record they were written with by ETag/MD5 and
//! modification time; the record and its extra are read in two lookups, so
//! a reader that sees them disagree (a concurrent re-upload or overwrite)
//! reads again.

use std::collections::HashMap;

use super::error::{Result, StoreError};
use super::meta::{self, Table};
use super::model::{self, ObjectParts, ObjectRecord, PartAttrsRecord, PartRecord};
use super::Store;

/// How often a read retries when a concurrent write slipped between its
/// two lookups; each retry needs another write to race it.
const RETRIES: usize = 8;

impl Store {
    /// The parts of an upload with each part's attributes (empty if it was
    /// uploaded without any), in part order.
    pub fn list_parts_with_attrs(
        &self,
        upload_id: &str,
    ) -> Result<Vec<(u32, PartRecord, Vec<u8>)>> {
        for _ in 0..RETRIES {
            let parts = self.list_parts(upload_id)?;
            let mut prefix = upload_id.as_bytes().to_vec();
            prefix.push(0);
            let mut extras: HashMap<u32, PartAttrsRecord> = HashMap::new();
            meta::for_each(&*self.inner.meta, Table::PartAttrs, &prefix, |k, v| {
                if let Ok(n) = <[u8; 4]>::try_from(&k[prefix.len()..]) {
                    extras.insert(u32::from_be_bytes(n), model::decode(v)?);
                }
                Ok(())
            })?;
            let mut out = Vec::with_capacity(parts.len());
            let mut consistent = true;
            for (n, p) in parts {
                let attrs = match extras.remove(&n) {
                    Some(a) if a.md5 == p.md5 && a.modified_ms == p.modified_ms => a.attrs,
                    // Written by another upload of this part than the one
                    // just read: read both again.
                    Some(_) => {
                        consistent = false;
                        break;
                    }
                    None => Vec::new(),
                };
                out.push((n, p, attrs));
            }
            if consistent {
                return Ok(out);
            }
        }
        Err(StoreError::Meta(format!(
            "parts of upload {upload_id} keep changing"
        )))
    }

    /// The object's record and, if it was completed from a multipart upload
    /// by a version that keeps them, its part boundaries.
    pub fn object_parts(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<(ObjectRecord, Option<ObjectParts>)> {
        let okey = model::object_key(bucket, key);
        for _ in 0..RETRIES {
            let rec = self.head(bucket, key)?;
            let layout: Option<ObjectParts> = self
                .inner
                .meta
                .get(Table::ObjectParts, &okey)?
                .map(|v| model::decode(&v))
                .transpose()?;
            match layout {
                Some(l) if l.etag == rec.etag && l.modified_ms == rec.modified_ms => {
                    return Ok((rec, Some(l)))
                }
                // Objects completed before part boundaries were kept, and
                // single PUTs, have none.
                None if rec == self.head(bucket, key)? => return Ok((rec, None)),
                _ => continue,
            }
        }
        Err(StoreError::Meta(format!(
            "parts of {bucket}/{key} keep changing"
        )))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::{Engine, Precondition, ProfileChoice, Store, StoreConfig, Target};

    fn open(dir: &std::path::Path, engine: Engine) -> Store {
        Store::open(
            dir,
            StoreConfig {
                engine,
                min_part_size: 1024,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn part(s: &Store, id: &str, n: u32, data: &[u8], attrs: &[u8]) -> String {
        let mut w = s
            .writer(
                Target::Part {
                    upload_id: id.into(),
                    part: n,
                },
                ProfileChoice::Auto,
            )
            .unwrap();
        w.write(Bytes::copy_from_slice(data)).unwrap();
        w.finish(attrs.to_vec(), None).unwrap().etag
    }

    #[test]
    fn part_attrs_and_object_parts_follow_their_records() {
        for engine in [Engine::Redb, Engine::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path(), engine);
            s.create_bucket("bkt", "me").unwrap();
            let id = s
                .create_upload("bkt", "obj", b"upload".to_vec(), ProfileChoice::Auto)
                .unwrap();
            let e1 = part(&s, &id, 1, &[1u8; 2000], b"first");
            // Re-uploading replaces the attributes with the part; without
            // attributes, none are left from the earlier upload.
            part(&s, &id, 2, &[2u8; 500], b"old");
            let e2 = part(&s, &id, 2, &[3u8; 700], b"");
            let listed = s.list_parts_with_attrs(&id).unwrap();
            assert_eq!(listed.len(), 2);
            assert_eq!((listed[0].0, listed[0].2.as_slice()), (1, &b"first"[..]));
            assert_eq!((listed[1].0, listed[1].1.size), (2, 700));
            assert!(listed[1].2.is_empty());
            part(&s, &id, 2, &[3u8; 700], b"newer");
            assert_eq!(s.list_parts_with_attrs(&id).unwrap()[1].2, b"newer");

            let rec = s
                .complete_upload_with(
                    &id,
                    &[(1, e1), (2, e2)],
                    &Precondition::None,
                    Some(b"final".to_vec()),
                )
                .unwrap();
            assert_eq!(rec.attrs, b"final");
            let (head, layout) = s.object_parts("bkt", "obj").unwrap();
            assert_eq!(head, rec);
            let layout = layout.expect("multipart objects keep their parts");
            assert_eq!(layout.parts.len(), 2);
            assert_eq!(
                (layout.parts[0].size, layout.parts[0].attrs.as_slice()),
                (2000, &b"first"[..])
            );
            assert_eq!(
                (layout.parts[1].size, layout.parts[1].attrs.as_slice()),
                (700, &b"newer"[..])
            );

            // A copy keeps them; an overwrite by a single PUT drops them; a
            // delete drops them.
            s.copy_object(("bkt", "obj"), ("bkt", "copy"), None, &Precondition::None)
                .unwrap();
            assert_eq!(
                s.object_parts("bkt", "copy").unwrap().1.map(|l| l.parts),
                Some(layout.parts.clone())
            );
            s.put_reader(
                "bkt",
                "obj",
                &b"plain"[..],
                ProfileChoice::Auto,
                vec![],
                |_| {},
            )
            .unwrap();
            assert_eq!(s.object_parts("bkt", "obj").unwrap().1, None);
            s.delete_object("bkt", "copy").unwrap();
            assert!(s.object_parts("bkt", "copy").is_err());
            s.create_upload("bkt", "again", vec![], ProfileChoice::Auto)
                .unwrap();
            // A repository reopens with the new tables in it.
            drop(s);
            let s = open(dir.path(), engine);
            assert_eq!(s.object_parts("bkt", "obj").unwrap().1, None);
        }
    }

    #[test]
    fn abort_and_completion_leave_no_part_attrs() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), Engine::Sled);
        s.create_bucket("bkt", "me").unwrap();
        let count = |s: &Store| {
            s.inner
                .meta
                .scan(super::Table::PartAttrs, b"", b"", 100)
                .unwrap()
                .len()
        };
        let id = s
            .create_upload("bkt", "a", vec![], ProfileChoice::Auto)
            .unwrap();
        part(&s, &id, 1, &[1u8; 2000], b"x");
        part(&s, &id, 2, &[2u8; 10], b"y");
        assert_eq!(count(&s), 2);
        s.abort_upload(&id).unwrap();
        assert_eq!(count(&s), 0);
        let id = s
            .create_upload("bkt", "b", vec![], ProfileChoice::Auto)
            .unwrap();
        let e1 = part(&s, &id, 1, &[1u8; 2000], b"x");
        // Uploaded but not named in the completion: dropped with its attrs.
        part(&s, &id, 2, &[2u8; 10], b"y");
        s.complete_upload(&id, &[(1, e1)], &Precondition::None)
            .unwrap();
        assert_eq!(count(&s), 0);
        let (_, layout) = s.object_parts("bkt", "b").unwrap();
        assert_eq!(layout.unwrap().parts.len(), 1);
    }

    #[test]
    fn completion_sees_a_part_replaced_after_listing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), Engine::Redb);
        s.create_bucket("bkt", "me").unwrap();
        let id = s
            .create_upload("bkt", "obj", vec![], ProfileChoice::Auto)
            .unwrap();
        let old = part(&s, &id, 1, &[7u8; 300], b"a");
        let new = part(&s, &id, 1, &[8u8; 300], b"b");
        assert!(matches!(
            s.complete_upload(&id, &[(1, old)], &Precondition::None),
            Err(crate::StoreError::InvalidPart(_))
        ));
        s.complete_upload(&id, &[(1, new)], &Precondition::None)
            .unwrap();
        let mut data = Vec::new();
        for p in s.read("bkt", "obj", None).unwrap() {
            data.extend_from_slice(&p.unwrap());
        }
        assert_eq!(data, vec![8u8; 300]);
        // Every chunk the object holds is referenced once: nothing leaks to
        // or is taken from GC by the replaced upload.
        s.gc(&crate::GcOptions {
            grace: std::time::Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
        let mut again = Vec::new();
        for p in s.read("bkt", "obj", None).unwrap() {
            again.extend_from_slice(&p.unwrap());
        }
        assert_eq!(again, vec![8u8; 300]);
    }
}
