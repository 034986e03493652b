//! Page deltas (CloudNet §4.3 and §5.3; QEMU's xbzrle is the same idea): a
//! page that was sent before goes as the XOR of its new and previous
//! contents, run-length encoded, when that is smaller than a threshold.
//!
//! Pure functions, no I/O, no state: the sender keeps the previous version
//! of the pages it sent (see `rcache::PageEncoder`), the receiver applies a
//! delta to the copy of the page it already holds.
//!
//! Format, repeated until the page ends (trailing unchanged bytes are
//! implicit):
//!
//! ```text
//! varint  zero_run      bytes unchanged since the previous version
//! varint  literal_len   bytes that changed (>= 1, except in an empty delta)
//! [u8]    literal       old XOR new for those bytes
//! ```
//!
//! Varints are LEB128. A page that did not change encodes as zero bytes.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("page versions differ in size ({old} vs {new} bytes)")]
    SizeMismatch { old: usize, new: usize },
    #[error("delta is malformed at byte {at}: {why}")]
    Malformed { at: usize, why: &'static str },
}

/// XOR-RLE encode `new` against `old` into `out` (cleared first).
///
/// Returns `Ok(false)` as soon as the encoding would exceed `limit` bytes:
/// a heavily modified page is cheaper to send whole (CloudNet §5.3), and
/// stopping early keeps the cost of a useless attempt low.
pub fn encode(old: &[u8], new: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<bool, DeltaError> {
    if old.len() != new.len() {
        return Err(DeltaError::SizeMismatch {
            old: old.len(),
            new: new.len(),
        });
    }
    out.clear();
    let n = new.len();
    let mut pos = 0usize;
    while pos < n {
        let run_start = pos;
        pos = skip_equal(old, new, pos);
        if pos == n {
            break; // trailing unchanged bytes are implicit
        }
        let lit_start = pos;
        // A changed region ends at the first run of >= 2 equal bytes: a
        // single equal byte costs less inside the literal than the two
        // varints a new segment needs.
        while pos < n {
            if old[pos] != new[pos] {
                pos += 1;
            } else if pos + 1 < n && old[pos + 1] != new[pos + 1] {
                pos += 2;
            } else {
                break;
            }
        }
        let lit_len = pos - lit_start;
        put_varint(out, (lit_start - run_start) as u64);
        put_varint(out, lit_len as u64);
        if out.len() + lit_len > limit {
            return Ok(false);
        }
        out.extend(
            old[lit_start..pos]
                .iter()
                .zip(&new[lit_start..pos])
                .map(|(a, b)| a ^ b),
        );
    }
    Ok(out.len() <= limit)
}

/// Apply a delta made by [`encode`] to `page` (the previous version) in
/// place. On error `page` may be partly updated; callers treat the page as
/// lost and resend it whole.
pub fn apply(page: &mut [u8], delta: &[u8]) -> Result<(), DeltaError> {
    let mut at = 0usize;
    let mut pos = 0usize;
    while at < delta.len() {
        let zero_run = get_varint(delta, &mut at)?;
        let lit_len = get_varint(delta, &mut at)?;
        pos = pos
            .checked_add(zero_run)
            .filter(|p| *p <= page.len())
            .ok_or(DeltaError::Malformed {
                at,
                why: "run past the end of the page",
            })?;
        let end = pos
            .checked_add(lit_len)
            .filter(|e| *e <= page.len())
            .ok_or(DeltaError::Malformed {
                at,
                why: "literal past the end of the page",
            })?;
        let lit = delta.get(at..at + lit_len).ok_or(DeltaError::Malformed {
            at,
            why: "literal truncated",
        })?;
        for (b, x) in page[pos..end].iter_mut().zip(lit) {
            *b ^= x;
        }
        at += lit_len;
        pos = end;
    }
    Ok(())
}

/// First index >= `pos` where the slices differ (or the length). Compares
/// eight bytes at a time because most of a re-sent page is unchanged.
fn skip_equal(a: &[u8], b: &[u8], mut pos: usize) -> usize {
    let n = a.len();
    while pos + 8 <= n {
        let x = u64::from_ne_bytes(a[pos..pos + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_ne_bytes(b[pos..pos + 8].try_into().unwrap_or([0; 8]));
        if x != y {
            break;
        }
        pos += 8;
    }
    while pos < n && a[pos] == b[pos] {
        pos += 1;
    }
    pos
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> Result<usize, DeltaError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or(DeltaError::Malformed {
            at: *at,
            why: "varint truncated",
        })?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return usize::try_from(v).map_err(|_| DeltaError::Malformed {
                at: *at,
                why: "varint too large",
            });
        }
    }
    Err(DeltaError::Malformed {
        at: *at,
        why: "varint too long",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(old: &[u8], new: &[u8]) -> usize {
        let mut d = Vec::new();
        assert!(encode(old, new, usize::MAX, &mut d).unwrap());
        let mut page = old.to_vec();
        apply(&mut page, &d).unwrap();
        assert_eq!(page, new);
        d.len()
    }

    #[test]
    fn unchanged_page_is_empty() {
        let p = vec![7u8; 4096];
        assert_eq!(roundtrip(&p, &p), 0);
    }

    #[test]
    fn small_change_is_small() {
        let old = vec![1u8; 4096];
        let mut new = old.clone();
        new[100..108].copy_from_slice(b"abcdefgh");
        new[4095] = 0;
        assert!(roundtrip(&old, &new) <= 16);
    }

    #[test]
    fn over_limit_reports_false() {
        let old = vec![0u8; 4096];
        let new = vec![0xffu8; 4096];
        let mut d = Vec::new();
        assert!(!encode(&old, &new, 2048, &mut d).unwrap());
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut d = Vec::new();
        assert!(matches!(
            encode(&[0; 4], &[0; 5], 10, &mut d),
            Err(DeltaError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn malformed_deltas_are_rejected() {
        let mut page = vec![0u8; 16];
        // run of 20 past a 16-byte page
        assert!(apply(&mut page, &[20, 1, 0]).is_err());
        // literal truncated
        assert!(apply(&mut page, &[0, 4, 1]).is_err());
        // varint never ends
        assert!(apply(&mut page, &[0xff; 11]).is_err());
    }

    proptest! {
        #[test]
        fn roundtrips(old in proptest::collection::vec(any::<u8>(), 256),
                      edits in proptest::collection::vec((0usize..256, any::<u8>()), 0..40)) {
            let mut new = old.clone();
            for (i, b) in edits { new[i] = b; }
            roundtrip(&old, &new);
        }
    }
}
