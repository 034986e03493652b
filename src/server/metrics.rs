//! Prometheus `/metrics`: request counters and latencies from the S3 layer,
//! plus store gauges. Store-wide figures (logical bytes, dedup ratio) need a
//! walk over every manifest, so a background task refreshes them each minute
//! instead of every scrape paying for it.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use s3_compat::{MetricsSink, S3Metrics};

use crate::store::{Store, StoreStats};

pub struct Metrics {
    s3: Arc<S3Metrics>,
    store: Store,
    stats: Mutex<Option<StoreStats>>,
}

impl Metrics {
    pub fn new(store: Store) -> Metrics {
        Metrics {
            s3: Arc::new(S3Metrics::new()),
            store,
            stats: Mutex::new(None),
        }
    }

    pub fn sink(&self) -> Arc<dyn MetricsSink> {
        self.s3.clone()
    }

    pub fn spawn_refresh(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let store = me.store.clone();
                if let Ok(Ok(s)) = tokio::task::spawn_blocking(move || store.stats()).await {
                    *me.stats.lock() = Some(s);
                }
            }
        });
    }

    pub fn render(&self) -> String {
        let mut out = self.s3.render_prometheus();
        let _ = writeln!(out, "# HELP strato_chunks Chunks in the index.");
        let _ = writeln!(out, "# TYPE strato_chunks gauge");
        let _ = writeln!(out, "strato_chunks {}", self.store.chunk_count());
        if let Some(s) = self.stats.lock().as_ref() {
            for (name, help, v) in [
                ("strato_objects", "Objects stored.", s.objects as f64),
                (
                    "strato_logical_bytes",
                    "Sum of object sizes.",
                    s.logical_bytes as f64,
                ),
                (
                    "strato_stored_bytes",
                    "Bytes of distinct referenced chunks.",
                    s.stored_bytes as f64,
                ),
                (
                    "strato_segment_bytes",
                    "Bytes of segment files on disk.",
                    s.segment_bytes_on_disk as f64,
                ),
                (
                    "strato_dedup_ratio",
                    "Logical bytes / stored bytes.",
                    s.dedup_ratio,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} gauge");
                let _ = writeln!(out, "{name} {v}");
            }
        }
        out
    }

    pub fn response(&self) -> hyper::Response<s3_compat::ResponseBody> {
        let body = http_body_util::Full::new(Bytes::from(self.render()))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut resp = hyper::Response::new(body);
        if let Ok(v) = "text/plain; version=0.0.4".parse() {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    }
}
