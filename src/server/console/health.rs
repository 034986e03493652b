//! A short in-memory history of the `/metrics` figures the Health page
//! charts: request and error rates, latency quantiles, open uploads.
//!
//! Samples are read from the same Prometheus text `/metrics` serves, so the
//! page shows exactly what a scraper would see.

use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};

/// Samples kept: 120, ten minutes at the default 5 s.
pub const KEEP: usize = 120;

/// Cumulative counters at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub time_ms: u64,
    pub requests: f64,
    /// Responses with status 500 and above.
    pub server_errors: f64,
    /// Responses with status 400..500.
    pub client_errors: f64,
    /// Latency histogram over all operations: upper bound (s) -> count.
    pub latency: BTreeMap<u64, f64>,
    pub open_uploads: u64,
}

/// Rates and quantiles between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Point {
    pub time_ms: u64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    pub client_errors_per_s: f64,
    /// Seconds; upper bucket bound of the quantile, 0 without requests.
    pub p50: f64,
    pub p99: f64,
    pub open_uploads: u64,
}

/// Bounds are kept as microseconds so they sort in a map.
fn micros(le: f64) -> u64 {
    (le * 1e6).round() as u64
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The counters in a Prometheus text exposition of s3-compat's metrics.
pub fn parse(text: &str, time_ms: u64, open_uploads: u64) -> Counters {
    let mut c = Counters {
        time_ms,
        open_uploads,
        ..Default::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((lhs, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match lhs.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (lhs, ""),
        };
        match name {
            "s3_requests_total" => {
                c.requests += v;
                match label(labels, "status").and_then(|s| s.parse::<u16>().ok()) {
                    Some(s) if s >= 500 => c.server_errors += v,
                    Some(s) if s >= 400 => c.client_errors += v,
                    _ => {}
                }
            }
            "s3_request_duration_seconds_bucket" => {
                let Some(le) = label(labels, "le") else {
                    continue;
                };
                let key = if le == "+Inf" {
                    u64::MAX
                } else {
                    match le.parse::<f64>() {
                        Ok(x) => micros(x),
                        Err(_) => continue,
                    }
                };
                *c.latency.entry(key).or_default() += v;
            }
            _ => {}
        }
    }
    c
}

/// The smallest bucket bound holding quantile `q` of `hist` (cumulative).
fn quantile(hist: &BTreeMap<u64, f64>, q: f64) -> f64 {
    let total = hist.get(&u64::MAX).copied().unwrap_or(0.0);
    if total <= 0.0 {
        return 0.0;
    }
    let want = total * q;
    for (&le, &n) in hist {
        if n >= want {
            // Beyond the last finite bound: report that bound.
            return if le == u64::MAX {
                hist.keys().rev().nth(1).map_or(0.0, |&b| b as f64 / 1e6)
            } else {
                le as f64 / 1e6
            };
        }
    }
    0.0
}

pub fn point(a: &Counters, b: &Counters) -> Point {
    let dt = (b.time_ms.saturating_sub(a.time_ms)) as f64 / 1000.0;
    let per_s = |x: f64, y: f64| if dt > 0.0 { (y - x).max(0.0) / dt } else { 0.0 };
    let window: BTreeMap<u64, f64> = b
        .latency
        .iter()
        .map(|(k, v)| (*k, (v - a.latency.get(k).copied().unwrap_or(0.0)).max(0.0)))
        .collect();
    Point {
        time_ms: b.time_ms,
        requests_per_s: per_s(a.requests, b.requests),
        errors_per_s: per_s(a.server_errors, b.server_errors),
        client_errors_per_s: per_s(a.client_errors, b.client_errors),
        p50: quantile(&window, 0.5),
        p99: quantile(&window, 0.99),
        open_uploads: b.open_uploads,
    }
}

#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Counters>>,
}

impl History {
    pub fn push(&self, c: Counters) {
        let mut s = self.samples.lock();
        s.push_back(c);
        while s.len() > KEEP + 1 {
            s.pop_front();
        }
    }

    pub fn points(&self) -> Vec<Point> {
        let s = self.samples.lock();
        s.iter()
            .zip(s.iter().skip(1))
            .map(|(a, b)| point(a, b))
            .collect()
    }

    /// The newest sample's cumulative counters.
    pub fn last(&self) -> Option<Counters> {
        self.samples.lock().back().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT_A: &str = "# HELP s3_requests_total x\n\
        s3_requests_total{op=\"GetObject\",status=\"200\"} 10\n\
        s3_requests_total{op=\"GetObject\",status=\"404\"} 2\n\
        s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.01\"} 10\n\
        s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.1\"} 12\n\
        s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"+Inf\"} 12\n";
    const TEXT_B: &str = "s3_requests_total{op=\"GetObject\",status=\"200\"} 20\n\
        s3_requests_total{op=\"GetObject\",status=\"404\"} 2\n\
        s3_requests_total{op=\"PutObject\",status=\"503\"} 10\n\
        s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.01\"} 11\n\
        s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.1\"} 22\n\
        s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"+Inf\"} 22\n\
        s3_request_duration_seconds_bucket{op=\"PutObject\",le=\"0.01\"} 0\n\
        s3_request_duration_seconds_bucket{op=\"PutObject\",le=\"0.1\"} 0\n\
        s3_request_duration_seconds_bucket{op=\"PutObject\",le=\"+Inf\"} 10\n";

    #[test]
    fn rates_and_quantiles_between_samples() {
        let a = parse(TEXT_A, 1_000, 0);
        assert_eq!(a.requests, 12.0);
        assert_eq!(a.client_errors, 2.0);
        let b = parse(TEXT_B, 11_000, 3);
        let p = point(&a, &b);
        assert_eq!(p.requests_per_s, 2.0);
        assert_eq!(p.errors_per_s, 1.0);
        assert_eq!(p.client_errors_per_s, 0.0);
        // 20 requests in the window: 1 under 10 ms, 9 more under 100 ms, 10 slower.
        assert_eq!(p.p50, 0.1);
        assert_eq!(p.p99, 0.1);
        assert_eq!(p.open_uploads, 3);
        let h = History::default();
        for i in 0..(KEEP as u64 + 10) {
            h.push(parse(TEXT_A, i * 1000, 0));
        }
        assert_eq!(h.points().len(), KEEP);
        assert_eq!(point(&a, &a).p50, 0.0);
    }
}
