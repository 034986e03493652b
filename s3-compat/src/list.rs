//! Listing rules on top of the backend's raw, ordered key listing: prefix,
//! delimiter grouping into common prefixes, page size and truncation.

use crate::backend::{Backend, BackendError, ObjectInfo};

/// How many keys to ask the backend for at a time.
const PAGE: usize = 1000;

/// A character that sorts after every continuation of a key in UTF-8 byte
/// order; `p + SKIP` resumes a listing after every key starting with `p`.
const SKIP: char = char::MAX;

#[derive(Debug, Clone, Default)]
pub(crate) struct ListParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Exclusive lower bound (marker, start-after or continuation cursor).
    pub after: Option<String>,
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    Object(Box<ObjectInfo>),
    Prefix(String),
}

#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub entries: Vec<Entry>,
    pub is_truncated: bool,
    /// Where the next page starts (exclusive), when truncated.
    pub next_cursor: Option<String>,
    /// The last key or common prefix returned (S3's NextMarker).
    pub last: Option<String>,
}

impl Listing {
    pub(crate) fn objects(&self) -> impl Iterator<Item = &ObjectInfo> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Object(o) => Some(o.as_ref()),
            Entry::Prefix(_) => None,
        })
    }

    pub(crate) fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Object(_) => None,
            Entry::Prefix(p) => Some(p.as_str()),
        })
    }
}

/// The common prefix `key` rolls up into, if any.
fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    let i = rest.find(d)?;
    key.get(..prefix.len() + i + d.len())
}

pub(crate) async fn list(
    backend: &dyn Backend,
    bucket: &str,
    params: &ListParams,
) -> Result<Listing, BackendError> {
    list_paged(backend, bucket, params, PAGE).await
}

async fn list_paged(
    backend: &dyn Backend,
    bucket: &str,
    params: &ListParams,
    page_size: usize,
) -> Result<Listing, BackendError> {
    if params.max_keys == 0 {
        // Nothing was asked for; claiming truncation without a way to
        // continue would make paginators spin.
        return Ok(Listing::default());
    }
    let delimiter = params.delimiter.as_deref();
    let mut cursor = params.after.clone();
    // A marker that is itself a common prefix means "after that whole group".
    if let Some(c) = &cursor {
        if common_prefix(c, &params.prefix, delimiter) == Some(c.as_str()) {
            cursor = Some(format!("{c}{SKIP}"));
        }
    }
    let mut out = Listing::default();
    let mut last_prefix: Option<String> = None;
    loop {
        let (page, more) = backend
            .list_objects(bucket, &params.prefix, cursor.as_deref(), page_size)
            .await?;
        let page_len = page.len();
        let mut last_key = None;
        for obj in page {
            last_key = Some(obj.key.clone());
            let entry = match common_prefix(&obj.key, &params.prefix, delimiter) {
                Some(cp) => {
                    if last_prefix.as_deref() == Some(cp) {
                        continue;
                    }
                    Entry::Prefix(cp.to_owned())
                }
                None => Entry::Object(Box::new(obj)),
            };
            if out.entries.len() >= params.max_keys {
                out.is_truncated = true;
                out.next_cursor = out.last.as_ref().map(|l| match &last_prefix {
                    Some(p) if p == l => format!("{p}{SKIP}"),
                    _ => l.clone(),
                });
                return Ok(out);
            }
            match &entry {
                Entry::Prefix(p) => {
                    last_prefix = Some(p.clone());
                    out.last = Some(p.clone());
                }
                Entry::Object(o) => out.last = Some(o.key.clone()),
            }
            out.entries.push(entry);
        }
        if !more || page_len == 0 {
            return Ok(out);
        }
        // Resume after the page; jump over the rest of an open group.
        cursor = match (&last_prefix, last_key) {
            (Some(p), Some(k)) if k.starts_with(p.as_str()) => Some(format!("{p}{SKIP}")),
            (_, k) => k,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BucketInfo, ByteStream, ObjectAttrs, PartInfo, PutOptions, UploadInfo};
    use std::ops::Range;

    /// Only listing; everything else is unreachable from these tests.
    struct Keys(Vec<String>);

    fn info(key: &str) -> ObjectInfo {
        ObjectInfo {
            bucket: "b".into(),
            key: key.into(),
            size: 0,
            etag: String::new(),
            last_modified: std::time::UNIX_EPOCH,
            attrs: ObjectAttrs::default(),
        }
    }

    fn nope<T>() -> Result<T, BackendError> {
        Err(BackendError::Internal("not in this test".into()))
    }

    #[async_trait::async_trait]
    impl Backend for Keys {
        async fn list_objects(
            &self,
            _bucket: &str,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
        ) -> Result<(Vec<ObjectInfo>, bool), BackendError> {
            let mut it = self
                .0
                .iter()
                .filter(|k| k.starts_with(prefix))
                .filter(|k| start_after.is_none_or(|s| k.as_str() > s));
            let page: Vec<_> = it.by_ref().take(limit).map(|k| info(k)).collect();
            Ok((page, it.next().is_some()))
        }
        async fn list_buckets(&self, _: &str) -> Result<Vec<BucketInfo>, BackendError> {
            nope()
        }
        async fn create_bucket(&self, _: &str, _: &str) -> Result<(), BackendError> {
            nope()
        }
        async fn head_bucket(&self, _: &str) -> Result<BucketInfo, BackendError> {
            nope()
        }
        async fn delete_bucket(&self, _: &str) -> Result<(), BackendError> {
            nope()
        }
        async fn put_object(
            &self,
            _: &str,
            _: &str,
            _: ByteStream,
            _: ObjectAttrs,
            _: PutOptions,
        ) -> Result<ObjectInfo, BackendError> {
            nope()
        }
        async fn get_object(
            &self,
            _: &str,
            _: &str,
            _: Option<Range<u64>>,
        ) -> Result<(ObjectInfo, ByteStream), BackendError> {
            nope()
        }
        async fn head_object(&self, _: &str, _: &str) -> Result<ObjectInfo, BackendError> {
            nope()
        }
        async fn delete_object(&self, _: &str, _: &str) -> Result<(), BackendError> {
            nope()
        }
        async fn copy_object(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: &str,
            _: Option<ObjectAttrs>,
            _: PutOptions,
        ) -> Result<ObjectInfo, BackendError> {
            nope()
        }
        async fn create_multipart(
            &self,
            _: &str,
            _: &str,
            _: ObjectAttrs,
            _: PutOptions,
        ) -> Result<String, BackendError> {
            nope()
        }
        async fn upload_part(
            &self,
            _: &str,
            _: u32,
            _: ByteStream,
            _: Option<[u8; 16]>,
        ) -> Result<PartInfo, BackendError> {
            nope()
        }
        async fn upload_part_copy(
            &self,
            _: &str,
            _: u32,
            _: &str,
            _: &str,
            _: Option<Range<u64>>,
        ) -> Result<PartInfo, BackendError> {
            nope()
        }
        async fn list_parts(&self, _: &str) -> Result<Vec<PartInfo>, BackendError> {
            nope()
        }
        async fn complete_multipart(
            &self,
            _: &str,
            _: Vec<(u32, String)>,
            _: PutOptions,
        ) -> Result<ObjectInfo, BackendError> {
            nope()
        }
        async fn abort_multipart(&self, _: &str) -> Result<(), BackendError> {
            nope()
        }
        async fn list_multipart_uploads(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Vec<UploadInfo>, BackendError> {
            nope()
        }
    }

    /// The whole answer, computed naively: keys and common prefixes in order.
    fn model(keys: &[String], prefix: &str, delimiter: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for k in keys.iter().filter(|k| k.starts_with(prefix)) {
            let e = common_prefix(k, prefix, delimiter).unwrap_or(k).to_owned();
            if out.last() != Some(&e) {
                out.push(e);
            }
        }
        out
    }

    /// Pages through the listing like a v2 client, checking each page.
    async fn paged(
        b: &Keys,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
        page_size: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut after = None;
        for _ in 0..10_000 {
            let params = ListParams {
                prefix: prefix.to_owned(),
                delimiter: delimiter.map(str::to_owned),
                after: after.clone(),
                max_keys,
            };
            let l = list_paged(b, "b", &params, page_size).await.unwrap();
            assert!(l.entries.len() <= max_keys);
            for e in &l.entries {
                out.push(match e {
                    Entry::Object(o) => o.key.clone(),
                    Entry::Prefix(p) => p.clone(),
                });
            }
            if !l.is_truncated {
                return out;
            }
            assert_eq!(l.entries.len(), max_keys, "a truncated page is full");
            after = l.next_cursor;
            assert!(after.is_some());
        }
        panic!("listing did not terminate");
    }

    #[tokio::test]
    async fn paging_matches_a_naive_model() {
        let mut x: u32 = 12345;
        let mut rnd = move |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let alphabet = ['a', 'b', '/', '-'];
        let mut keys: Vec<String> = (0..300)
            .map(|_| {
                let len = 1 + rnd(6) as usize;
                (0..len).map(|_| alphabet[rnd(4) as usize]).collect()
            })
            .collect();
        keys.sort();
        keys.dedup();
        let b = Keys(keys.clone());
        for prefix in ["", "a", "a/", "b-", "/"] {
            for delimiter in [None, Some("/"), Some("-"), Some("a/")] {
                let want = model(&keys, prefix, delimiter);
                for (max_keys, page) in [(1, 1), (2, 3), (7, 2), (1000, 5), (3, 1000)] {
                    let got = paged(&b, prefix, delimiter, max_keys, page).await;
                    assert_eq!(got, want, "{prefix:?} {delimiter:?} {max_keys} {page}");
                }
            }
        }
    }

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix("a/b/c", "", Some("/")), Some("a/"));
        assert_eq!(common_prefix("a/b/c", "a/", Some("/")), Some("a/b/"));
        assert_eq!(common_prefix("a/b", "a/b", Some("/")), None);
        assert_eq!(common_prefix("abc", "", None), None);
        assert_eq!(common_prefix("a--b", "", Some("--")), Some("a--"));
    }
}
