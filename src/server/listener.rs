//! One accept loop for every HTTP listener strato runs (the S3 port, a
//! node's chunk serving, stats endpoints): optional TLS, bounds on what a
//! client can hold open, and a graceful drain on shutdown.
//!
//! Bounds, because a listener that anyone can reach must not be held by
//! clients that connect and say nothing:
//! - at most `max_connections` connections at once; past that the loop stops
//!   accepting (new clients wait in the kernel's backlog) instead of failing;
//! - a TLS handshake must finish within `handshake_timeout`;
//! - a new plain-TCP connection must send its first bytes within
//!   `header_read_timeout`;
//! - HTTP/1 request headers must then arrive within `idle_timeout`, which
//!   hyper also applies to the wait for the next request on a kept-alive
//!   connection. It is longer than the 90 s that the AWS SDKs (Rust, Go,
//!   Java) keep a pooled connection: if the server closed first, a client
//!   could send a request on a connection the server is just closing and
//!   see it cut off (hyper's `IncompleteMessage`);
//! - HTTP/2 connections are pinged every `h2_keepalive` and closed when a
//!   ping goes unanswered.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::tls::TlsServer;

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub h2_keepalive: Duration,
    /// How long a shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(100),
            handshake_timeout: Duration::from_secs(10),
            h2_keepalive: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serve `handler` on `listener` until `shutdown` resolves, then stop
/// accepting and wait (up to `limits.drain_timeout`) for requests in flight.
pub async fn serve_on<H, Fut, B>(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builders = Arc::new(Builders::new(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // e.g. too many open files: back off instead of spinning
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (builders, handler, watcher) = (builders.clone(), handler.clone(), graceful.watcher());
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let (handshake, first_bytes) = (limits.handshake_timeout, limits.header_read_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => match sniff_h2(&stream, first_bytes).await {
                    Some(h2) => serve_conn(stream, builders.pick(h2), handler, watcher).await,
                    None => tracing::debug!(%peer, "no request before the header timeout"),
                },
                Some(acceptor) => {
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_conn(tls, builders.pick(h2), handler, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after {:?}; stopping anyway",
            limits.drain_timeout
        );
    }
}

/// One connection builder per protocol. The protocol is decided before
/// hyper sees the connection (ALPN, or the first bytes): hyper's own
/// detection waits for bytes with no timeout, so a client that connects and
/// stays silent would otherwise hold its connection forever.
struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(limits: &Limits) -> Builders {
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.idle_timeout);
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.h2_keepalive)
            .keep_alive_timeout(limits.h2_keepalive / 3);
        Builders { h1, h2 }
    }

    fn pick(&self, h2: bool) -> &auto::Builder<TokioExecutor> {
        if h2 {
            &self.h2
        } else {
            &self.h1
        }
    }
}

/// HTTP/2 with prior knowledge starts with this preface; anything else is
/// HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain-TCP client speaks h2 (prior knowledge) or HTTP/1, from
/// its first bytes (peeked, not consumed); `None` if it sends nothing that
/// decides it within `limit`, or closes.
async fn sniff_h2(stream: &tokio::net::TcpStream, limit: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A prefix of the preface so far: wait for more (peek returns at
        // once while data is buffered, so pause briefly instead of spinning).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve_conn<I, H, Fut, B>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    handler: H,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("connection ended: {e}");
    }
}
