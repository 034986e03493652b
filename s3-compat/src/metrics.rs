//! Per-request metrics: a callback the root crate implements, and a small
//! ready-made aggregate that renders Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// One finished request, as seen when its response head is sent.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// S3 operation name, e.g. "GetObject"; "Unknown" when the request was
    /// refused before it was routed (bad signature, malformed URL).
    pub op: String,
    pub status: u16,
    /// Declared request body size (decoded size for aws-chunked).
    pub bytes_in: u64,
    /// Response body size from Content-Length (0 when unknown).
    pub bytes_out: u64,
    /// Time to the response head.
    pub latency: Duration,
}

/// Receives one record per request.
pub trait MetricsSink: Send + Sync + 'static {
    fn record(&self, r: &RequestRecord);
}

/// Latency histogram bucket bounds, seconds.
const BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Debug, Default, Clone)]
struct OpStats {
    by_status: BTreeMap<u16, u64>,
    bytes_in: u64,
    bytes_out: u64,
    buckets: [u64; BOUNDS.len()],
    count: u64,
    sum_secs: f64,
}

/// Counters by operation and status, bytes in/out, latency histograms.
#[derive(Debug, Default)]
pub struct S3Metrics {
    ops: Mutex<BTreeMap<String, OpStats>>,
}

impl S3Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Prometheus text exposition of everything recorded so far.
    pub fn render_prometheus(&self) -> String {
        let ops = match self.ops.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP s3_requests_total S3 requests by operation and status."
        );
        let _ = writeln!(s, "# TYPE s3_requests_total counter");
        for (op, st) in &ops {
            for (status, n) in &st.by_status {
                let _ = writeln!(
                    s,
                    "s3_requests_total{{op=\"{op}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP s3_bytes_in_total Request body bytes by operation."
        );
        let _ = writeln!(s, "# TYPE s3_bytes_in_total counter");
        for (op, st) in &ops {
            let _ = writeln!(s, "s3_bytes_in_total{{op=\"{op}\"}} {}", st.bytes_in);
        }
        let _ = writeln!(
            s,
            "# HELP s3_bytes_out_total Response body bytes by operation."
        );
        let _ = writeln!(s, "# TYPE s3_bytes_out_total counter");
        for (op, st) in &ops {
            let _ = writeln!(s, "s3_bytes_out_total{{op=\"{op}\"}} {}", st.bytes_out);
        }
        let _ = writeln!(
            s,
            "# HELP s3_request_duration_seconds Time to response head."
        );
        let _ = writeln!(s, "# TYPE s3_request_duration_seconds histogram");
        for (op, st) in &ops {
            for (i, le) in BOUNDS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "s3_request_duration_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {}",
                    st.buckets[i]
                );
            }
            let _ = writeln!(
                s,
                "s3_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                st.count
            );
            let _ = writeln!(
                s,
                "s3_request_duration_seconds_sum{{op=\"{op}\"}} {}",
                st.sum_secs
            );
            let _ = writeln!(
                s,
                "s3_request_duration_seconds_count{{op=\"{op}\"}} {}",
                st.count
            );
        }
        s
    }
}

impl MetricsSink for S3Metrics {
    fn record(&self, r: &RequestRecord) {
        let mut ops = match self.ops.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let st = ops.entry(r.op.clone()).or_default();
        *st.by_status.entry(r.status).or_default() += 1;
        st.bytes_in += r.bytes_in;
        st.bytes_out += r.bytes_out;
        let secs = r.latency.as_secs_f64();
        for (i, le) in BOUNDS.iter().enumerate() {
            if secs <= *le {
                st.buckets[i] += 1;
            }
        }
        st.count += 1;
        st.sum_secs += secs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = S3Metrics::new();
        m.record(&RequestRecord {
            op: "GetObject".to_owned(),
            status: 200,
            bytes_in: 0,
            bytes_out: 10,
            latency: Duration::from_millis(3),
        });
        let t = m.render_prometheus();
        assert!(t.contains("s3_requests_total{op=\"GetObject\",status=\"200\"} 1"));
        assert!(t.contains("s3_bytes_out_total{op=\"GetObject\"} 10"));
        assert!(t.contains("s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.005\"} 1"));
        assert!(t.contains("s3_request_duration_seconds_bucket{op=\"GetObject\",le=\"0.0025\"} 0"));
    }
}
