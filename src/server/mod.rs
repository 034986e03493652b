//! The HTTP front door: one hyper server carrying the S3 API (s3-compat over
//! the store) and Prometheus `/metrics`.

mod backend;
pub mod chunks;
pub mod console;
mod credentials;
pub mod listener;
mod metrics;
pub mod swarm;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use s3_compat::{S3Config, S3Service, StaticCredentials};

pub use backend::StoreBackend;
pub use credentials::{load_or_create_users, Users, FIRST_USER};
pub use listener::{serve_on, Limits};
pub use tls::TlsServer;

use crate::config::FileConfig;
use crate::store::{GcOptions, Store};

/// Bucket names the server keeps for its own routes.
pub const RESERVED_BUCKETS: &[&str] = &["chunks", "metrics", "ui"];

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub users: Users,
    pub file: FileConfig,
    pub gc: GcOptions,
    pub gc_interval: Option<Duration>,
    /// HTTPS when set (reloaded on SIGHUP), plain HTTP otherwise.
    pub tls: Option<Arc<TlsServer>>,
    pub limits: Limits,
    /// The repository's ticket-signing public keys (text, one per line),
    /// published at `GET /chunks/trust-keys`.
    pub trust_keys: Option<String>,
    /// Signs distribution-session tickets (`POST /chunks/ticket/...`).
    pub session_signer: Option<chunks::SessionSigner>,
}

pub fn s3_config(file: &FileConfig) -> S3Config {
    let mut c = S3Config::default();
    if let Some(r) = &file.s3.region {
        c.region = r.clone();
    }
    c.virtual_host_domain = file.s3.virtual_host_domain.clone();
    c.anonymous_read_buckets = file.s3.anonymous_read.iter().cloned().collect();
    if let Some(m) = file.s3.max_object_size {
        c.max_object_size = m;
    }
    c
}

/// Run until SIGINT/SIGTERM, then finish the requests in flight.
pub async fn serve(store: Store, opts: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;

    let mut creds = StaticCredentials::new();
    for u in &opts.users.list {
        creds = creds.with_user(&u.name, &u.access_key, &u.secret_key);
    }
    let metrics = Arc::new(metrics::Metrics::new(store.clone()));
    let console = console::Console::new(
        store.clone(),
        opts.users.list.clone(),
        metrics.clone(),
        &s3_config(&opts.file),
        opts.tls.is_some(),
        console::ConsoleOptions {
            trust_keys: opts.trust_keys.clone(),
            ..console::ConsoleOptions::from_env()?
        },
    );
    let s3 = S3Service::builder(
        Arc::new(StoreBackend::new(store.clone())),
        Arc::new(creds),
        s3_config(&opts.file),
    )
    .metrics(metrics.sink())
    .extra_route(console.observe(chunks::route(
        store.clone(),
        opts.file.claim_limits(),
        opts.trust_keys.as_deref(),
        opts.session_signer.clone(),
    )))
    .build();
    let front = Front {
        s3,
        metrics: metrics.clone(),
        console: console.clone(),
    };
    metrics.spawn_refresh();
    console.spawn_samplers();
    if let Some(every) = opts.gc_interval.filter(|d| !d.is_zero()) {
        spawn_gc(store.clone(), opts.gc.clone(), every);
    }
    ready(addr);

    if let Some(tls) = opts.tls.clone() {
        spawn_tls_reload(tls);
    }
    serve_on(
        listener,
        opts.tls.clone(),
        opts.limits.clone(),
        move |req| {
            let front = front.clone();
            async move { front.route(req).await }
        },
        shutdown_signal(),
    )
    .await;
    Ok(())
}

/// SIGHUP re-reads the certificate files; connections in flight keep theirs.
fn spawn_tls_reload(tls: Arc<TlsServer>) {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: certificate reload disabled");
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(fp) => tracing::info!(fingerprint = %fp, "TLS certificate reloaded"),
                Err(e) => tracing::warn!("TLS certificate reload failed, keeping the old one: {e}"),
            }
        }
    });
}

#[derive(Clone)]
struct Front {
    s3: S3Service,
    metrics: Arc<metrics::Metrics>,
    console: console::Console,
}

impl Front {
    async fn route(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<s3_compat::ResponseBody> {
        if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
            return self.metrics.response();
        }
        if self.console.owns(&req) {
            return self.console.handle(req).await;
        }
        self.s3.handle(req).await
    }
}

fn spawn_gc(store: Store, opts: GcOptions, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (store, opts) = (store.clone(), opts.clone());
            match tokio::task::spawn_blocking(move || store.gc(&opts)).await {
                Ok(Ok(r)) => tracing::info!(
                    reclaimed = r.reclaimed_bytes,
                    freed = r.bytes_freed_on_disk,
                    "background gc"
                ),
                // Every frontend of a shared repository runs this timer; all
                // but the lease holder skip the round, which is normal.
                Ok(Err(strato_store::StoreError::Busy(why))) => {
                    tracing::info!("background gc skipped: {why}");
                }
                Ok(Err(e)) => tracing::warn!("background gc failed: {e}"),
                Err(e) => tracing::warn!("background gc task failed: {e}"),
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM: how every long-running strato command
/// (serve, nbd serve, chain-agent) is told to stop cleanly.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
