//! Load: 64 concurrent aws-sdk-s3 clients mixing PUT and GET of 1–64 MiB
//! objects against the real `strato serve` for 60 s. No errors, every GET
//! byte-identical to what was last PUT under its key, peak RSS of the server
//! reported and bounded (a safety net; the figures belong to the benches).
//!
//! Memory stays bounded on the test side too: objects are slices of two
//! shared random buffers (4 KiB-aligned offsets, so they also deduplicate in
//! the store), and GET bodies are compared piece by piece as they stream in.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "common/sdk.rs"]
mod sdk;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use common::*;
use rand::{Rng, SeedableRng};

const MIB: usize = 1 << 20;
const CLIENTS: usize = 64;
const KEYS_PER_CLIENT: usize = 3;
const RUN_FOR: Duration = Duration::from_secs(60);
const RSS_LIMIT_KIB: u64 = 1 << 20; // 1 GiB

/// What a key holds: a slice of one of the source buffers.
#[derive(Clone, Copy, Debug)]
struct Held {
    src: usize,
    offset: usize,
    len: usize,
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[derive(Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    ranged_gets: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Requests sent again after the connection failed before a response
    /// (what every SDK's default retry policy does).
    resent: AtomicU64,
}

/// Send a request; if it fails at the connection before any response (a
/// kept-alive connection that the server or the kernel closed as it was
/// reused), send it once more and count it: real clients retry these, so
/// one now and then is not an error, but many would be, and the test
/// bounds them.
async fn send_once_more_on_dispatch_failure<T, E, F, Fut>(
    counters: &Counters,
    send: F,
) -> Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<
        Output = Result<T, aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>>,
    >,
{
    match send().await {
        Err(aws_sdk_s3::error::SdkError::DispatchFailure(e)) => {
            eprintln!("sent again after a dispatch failure: {e:?}");
            counters.resent.fetch_add(1, Ordering::Relaxed);
            send().await
        }
        other => other,
    }
}

/// Compare a streaming GET body with `expected`, piece by piece.
async fn check_body(mut body: ByteStream, expected: &[u8], what: &str) -> Result<u64, String> {
    let mut at = 0usize;
    loop {
        match body.try_next().await {
            Ok(Some(piece)) => {
                let end = at + piece.len();
                if end > expected.len() || piece[..] != expected[at..end] {
                    return Err(format!("{what}: bytes differ at offset {at}"));
                }
                at = end;
            }
            Ok(None) => break,
            Err(e) => return Err(format!("{what}: body error at {at}: {e}")),
        }
    }
    if at != expected.len() {
        return Err(format!("{what}: got {at} of {} bytes", expected.len()));
    }
    Ok(at as u64)
}

async fn run_client(
    i: usize,
    client: aws_sdk_s3::Client,
    sources: Arc<Vec<Bytes>>,
    deadline: Instant,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + i as u64);
    let mut held: Vec<Option<Held>> = vec![None; KEYS_PER_CLIENT];
    let key = |k: usize| format!("client-{i:02}/obj-{k}");
    while Instant::now() < deadline {
        let k = rng.gen_range(0..KEYS_PER_CLIENT);
        let do_put = held[k].is_none() || rng.gen_bool(0.5);
        if do_put {
            // 1–64 MiB, smaller sizes more likely (log-uniform-ish).
            let len = if rng.gen_bool(0.75) {
                rng.gen_range(MIB..=16 * MIB)
            } else {
                rng.gen_range(16 * MIB..=64 * MIB)
            };
            let src = rng.gen_range(0..sources.len());
            let max_off = (sources[src].len() - len) / 4096;
            let offset = rng.gen_range(0..=max_off) * 4096;
            let body = sources[src].slice(offset..offset + len);
            let out = send_once_more_on_dispatch_failure(&counters, || {
                client
                    .put_object()
                    .bucket("load")
                    .key(key(k))
                    .body(ByteStream::from(body.clone()))
                    .send()
            })
            .await
            .map_err(|e| format!("PUT {} ({len} bytes): {e:?}", key(k)))?;
            if out.e_tag().is_none() {
                return Err(format!("PUT {}: no ETag", key(k)));
            }
            held[k] = Some(Held { src, offset, len });
            counters.puts.fetch_add(1, Ordering::Relaxed);
            counters.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
        } else {
            let h = held[k].unwrap();
            let whole = &sources[h.src][h.offset..h.offset + h.len];
            let ranged = rng.gen_bool(0.2);
            let (req, expected) = if ranged {
                let a = rng.gen_range(0..h.len);
                let b = rng.gen_range(a..h.len.min(a + 8 * MIB));
                (
                    client
                        .get_object()
                        .bucket("load")
                        .key(key(k))
                        .range(format!("bytes={a}-{b}")),
                    &whole[a..=b],
                )
            } else {
                (client.get_object().bucket("load").key(key(k)), whole)
            };
            let out = send_once_more_on_dispatch_failure(&counters, || req.clone().send())
                .await
                .map_err(|e| format!("GET {}: {e:?}", key(k)))?;
            let n = check_body(out.body, expected, &key(k)).await?;
            if ranged {
                counters.ranged_gets.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.gets.fetch_add(1, Ordering::Relaxed);
            }
            counters.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
    }
    // A last full check of every key this client holds.
    for (k, h) in held.iter().enumerate() {
        if let Some(h) = h {
            let out = send_once_more_on_dispatch_failure(&counters, || {
                client.get_object().bucket("load").key(key(k)).send()
            })
            .await
            .map_err(|e| format!("final GET {}: {e:?}", key(k)))?;
            check_body(
                out.body,
                &sources[h.src][h.offset..h.offset + h.len],
                &key(k),
            )
            .await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_for_sixty_seconds() {
    let server = Server::start("redb");
    let pid = server.pid();
    let admin = sdk::client(&server);
    admin.create_bucket().bucket("load").send().await.unwrap();
    let sources: Arc<Vec<Bytes>> = Arc::new(
        (0..2)
            .map(|s| Bytes::from(random_bytes(96 * MIB, 77 + s)))
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let deadline = started + RUN_FOR;

    // Sample the server's RSS while the load runs.
    let sampler = {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let mut peak = 0;
            while !s2.load(Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        (stop, h)
    };

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        // 64 independent SDK clients, each with its own connection pool.
        // No SDK retries: every failure counts (the one resend allowed after
        // a connection failure is counted and bounded).
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&server.endpoint)
            .credentials_provider(Credentials::new(
                &server.access_key,
                &server.secret_key,
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build();
        let client = aws_sdk_s3::Client::from_conf(conf);
        tasks.push(tokio::spawn(run_client(
            i,
            client,
            sources.clone(),
            deadline,
            counters.clone(),
        )));
    }
    let mut errors = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            errors.push(e);
        }
    }
    let elapsed = started.elapsed();
    sampler.0.store(true, Ordering::Relaxed);
    let peak_sampled = sampler.1.join().unwrap();
    let hwm = status_kib(pid, "VmHWM:");

    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (bin, bout) = (c(&counters.bytes_in), c(&counters.bytes_out));
    eprintln!(
        "load: {CLIENTS} clients, {:.1} s: {} PUTs ({} MiB, {:.0} MiB/s), {} GETs + {} ranged \
         ({} MiB, {:.0} MiB/s), {} sent again; server peak RSS (VmHWM) {} MiB, sampled VmRSS peak {} MiB",
        elapsed.as_secs_f64(),
        c(&counters.puts),
        bin >> 20,
        bin as f64 / 1048576.0 / elapsed.as_secs_f64(),
        c(&counters.gets),
        c(&counters.ranged_gets),
        bout >> 20,
        bout as f64 / 1048576.0 / elapsed.as_secs_f64(),
        c(&counters.resent),
        hwm >> 10,
        peak_sampled >> 10,
    );
    assert!(
        errors.is_empty(),
        "{} of {CLIENTS} clients failed; first: {}",
        errors.len(),
        errors[0]
    );
    let requests = c(&counters.puts) + c(&counters.gets) + c(&counters.ranged_gets);
    assert!(
        c(&counters.resent) * 200 <= requests,
        "{} of {requests} requests failed at the connection and were sent again (more than 0.5 %)",
        c(&counters.resent)
    );
    assert!(c(&counters.puts) >= CLIENTS as u64, "every client wrote");
    assert!(c(&counters.gets) > 0);
    assert!(
        hwm < RSS_LIMIT_KIB,
        "server peak RSS {} MiB is over the {} MiB safety net",
        hwm >> 10,
        RSS_LIMIT_KIB >> 10
    );
    // Every client's keys are there, and nothing else.
    let listed = sdk::keys(&admin, "load").await;
    assert!(listed.len() <= CLIENTS * KEYS_PER_CLIENT);
    assert!(listed.iter().all(|k| k.starts_with("client-")));
}
