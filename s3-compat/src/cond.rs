//! Conditional request headers (RFC 9110 §13) as S3 applies them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Proceed,
    NotModified,
    PreconditionFailed,
}

/// Header names for a plain request or for a copy source.
pub(crate) struct Names {
    pub if_match: &'static str,
    pub if_none_match: &'static str,
    pub if_modified_since: &'static str,
    pub if_unmodified_since: &'static str,
}

pub(crate) const PLAIN: Names = Names {
    if_match: "if-match",
    if_none_match: "if-none-match",
    if_modified_since: "if-modified-since",
    if_unmodified_since: "if-unmodified-since",
};

pub(crate) const COPY_SOURCE: Names = Names {
    if_match: "x-amz-copy-source-if-match",
    if_none_match: "x-amz-copy-source-if-none-match",
    if_modified_since: "x-amz-copy-source-if-modified-since",
    if_unmodified_since: "x-amz-copy-source-if-unmodified-since",
};

/// Strips quotes and a weak marker from an entity tag.
pub(crate) fn bare_etag(s: &str) -> &str {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"')
}

/// Whether a comma-separated `If-Match`-style list matches `etag`.
pub(crate) fn etag_list_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || bare_etag(t) == etag)
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn date(h: &HeaderMap, name: &str) -> Option<SystemTime> {
    // Unparsable dates are ignored, as HTTP requires.
    header(h, name).and_then(|s| httpdate::parse_http_date(s.trim()).ok())
}

/// HTTP dates have one-second resolution.
pub(crate) fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

/// Evaluates the conditions in `h` against an object. `read` is true for
/// GET/HEAD, where failed "none-match"/"modified-since" conditions mean 304;
/// for copy sources every failure is 412.
pub(crate) fn evaluate(
    h: &HeaderMap,
    names: &Names,
    etag: &str,
    last_modified: SystemTime,
    read: bool,
) -> Outcome {
    let lm = whole_seconds(last_modified);
    let not_modified = if read {
        Outcome::NotModified
    } else {
        Outcome::PreconditionFailed
    };
    if let Some(list) = header(h, names.if_match) {
        if !etag_list_matches(list, etag) {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(d) = date(h, names.if_unmodified_since) {
        if lm > d {
            return Outcome::PreconditionFailed;
        }
    }
    if let Some(list) = header(h, names.if_none_match) {
        if etag_list_matches(list, etag) {
            return not_modified;
        }
    } else if let Some(d) = date(h, names.if_modified_since) {
        if lm <= d {
            return not_modified;
        }
    }
    Outcome::Proceed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn rules() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let before = httpdate::fmt_http_date(t - Duration::from_secs(10));
        let after = httpdate::fmt_http_date(t + Duration::from_secs(10));
        let ev = |p: &[(&'static str, &str)]| evaluate(&hm(p), &PLAIN, "abc", t, true);
        assert_eq!(ev(&[]), Outcome::Proceed);
        assert_eq!(ev(&[("if-match", "\"abc\"")]), Outcome::Proceed);
        assert_eq!(ev(&[("if-match", "\"x\", \"abc\"")]), Outcome::Proceed);
        assert_eq!(ev(&[("if-match", "\"x\"")]), Outcome::PreconditionFailed);
        assert_eq!(ev(&[("if-none-match", "\"abc\"")]), Outcome::NotModified);
        assert_eq!(ev(&[("if-none-match", "*")]), Outcome::NotModified);
        assert_eq!(ev(&[("if-modified-since", &after)]), Outcome::NotModified);
        assert_eq!(ev(&[("if-modified-since", &before)]), Outcome::Proceed);
        assert_eq!(
            ev(&[("if-unmodified-since", &before)]),
            Outcome::PreconditionFailed
        );
        // If-Match true wins over If-Unmodified-Since false.
        assert_eq!(
            ev(&[("if-match", "\"abc\""), ("if-unmodified-since", &before)]),
            Outcome::Proceed
        );
        // If-None-Match false (no match) wins over If-Modified-Since.
        assert_eq!(
            ev(&[("if-none-match", "\"zz\""), ("if-modified-since", &after)]),
            Outcome::Proceed
        );
        let copy = evaluate(
            &hm(&[("x-amz-copy-source-if-none-match", "\"abc\"")]),
            &COPY_SOURCE,
            "abc",
            t,
            false,
        );
        assert_eq!(copy, Outcome::PreconditionFailed);
    }
}
