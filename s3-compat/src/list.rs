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
            .list_objects(bucket, &params.prefix, cursor.as_deref(), PAGE)
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

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix("a/b/c", "", Some("/")), Some("a/"));
        assert_eq!(common_prefix("a/b/c", "a/", Some("/")), Some("a/b/"));
        assert_eq!(common_prefix("a/b", "a/b", Some("/")), None);
        assert_eq!(common_prefix("abc", "", None), None);
        assert_eq!(common_prefix("a--b", "", Some("--")), Some("a--"));
    }
}
