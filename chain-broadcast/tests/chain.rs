//! Chains of in-process nodes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chain_broadcast::{
    propagate, BoxError, ChunkId, ChunkSink, ChunkSource, FileSinkFactory, Manifest, MemStore,
    Node, Options, Report, ServeOptions, SinkFactory, TransferInfo,
};
use rand::{RngCore, SeedableRng};

const CHUNK: usize = 64 << 10;

fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    Bytes::from(v)
}

/// A source holding `data` cut into fixed chunks.
fn source_for(data: &Bytes) -> (Arc<MemStore>, Arc<Manifest>, Vec<Bytes>) {
    let (manifest, parts) = Manifest::from_fixed_chunks(data, CHUNK);
    let src = MemStore::new();
    for (c, p) in manifest.chunks.iter().zip(&parts) {
        src.insert(c.id, p.clone());
    }
    (src, Arc::new(manifest), parts)
}

fn opts() -> Options {
    Options {
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(5),
        finish_timeout: Duration::from_secs(20),
        ..Options::default()
    }
}

async fn node(factory: Arc<dyn SinkFactory>) -> Node {
    Node::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        factory,
        ServeOptions::default(),
    )
    .await
    .expect("bind")
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

async fn run(
    src: &Arc<MemStore>,
    manifest: &Arc<Manifest>,
    nodes: &[SocketAddr],
    opts: &Options,
) -> Report {
    let source: Arc<dyn ChunkSource> = src.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        propagate(source, "disk.img", Arc::clone(manifest), nodes, opts),
    )
    .await
    .expect("propagation hung")
    .expect("propagation ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_copies_on_every_node() {
    let data = random_bytes(4 << 20, 1);
    let (src, manifest, _) = source_for(&data);
    let stores: Vec<Arc<MemStore>> = (0..4).map(|_| MemStore::new()).collect();
    let mut nodes = Vec::new();
    for s in &stores {
        nodes.push(node(s.factory()).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let report = run(&src, &manifest, &addrs, &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(
        report.bytes_sent,
        data.len() as u64,
        "sender sends the image once"
    );
    for (s, r) in stores.iter().zip(&report.nodes) {
        assert_eq!(s.object("disk.img").as_deref(), Some(&data[..]));
        assert_eq!(r.bytes_received, data.len() as u64);
        assert_eq!(r.bytes_written, data.len() as u64);
    }
    assert_eq!(
        report.nodes.iter().map(|n| n.addr).collect::<Vec<_>>(),
        addrs,
        "report follows the chain order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sinks_write_identical_files() {
    // Repeated chunks (zero blocks) are sent once and written at each offset.
    let mut v = random_bytes(3 << 20, 2).to_vec();
    v.extend(std::iter::repeat_n(0u8, 1 << 20));
    v.extend_from_slice(&random_bytes(100_001, 3));
    v.extend(std::iter::repeat_n(0u8, 512 << 10));
    let data = Bytes::from(v);
    let (src, manifest, _) = source_for(&data);
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(node(Arc::new(FileSinkFactory::new(d.path()))).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let report = run(&src, &manifest, &addrs, &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    let distinct: u64 = manifest.distinct().iter().map(|c| u64::from(c.len)).sum();
    assert_eq!(report.bytes_sent, distinct);
    assert!(distinct < data.len() as u64);
    for d in &dirs {
        let got = std::fs::read(d.path().join("disk.img")).expect("output file");
        assert!(got == data[..], "file differs");
        // No partial file left behind.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_receive_only_missing_chunks() {
    let data = random_bytes(2 << 20, 4);
    let (src, manifest, parts) = source_for(&data);
    let half: u64 = parts.iter().step_by(2).map(|p| p.len() as u64).sum();

    // One node holding every other chunk (an older version) gets only the rest.
    let holder = MemStore::new();
    for (c, p) in manifest.chunks.iter().zip(&parts).step_by(2) {
        holder.insert(c.id, p.clone());
    }
    let n = node(holder.factory()).await;
    let report = run(&src, &manifest, &[n.addr()], &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    let missing = data.len() as u64 - half;
    assert_eq!(report.bytes_sent, missing);
    assert_eq!(report.nodes[0].bytes_received, missing);
    assert_eq!(report.nodes[0].bytes_written, missing);
    assert_eq!(holder.bytes_put(), missing);
    assert_eq!(holder.object("disk.img").as_deref(), Some(&data[..]));

    // Three nodes that all hold the old half: only the new half moves on every hop.
    let stores: Vec<Arc<MemStore>> = (0..3).map(|_| MemStore::new()).collect();
    for s in &stores {
        for (c, p) in manifest.chunks.iter().zip(&parts).step_by(2) {
            s.insert(c.id, p.clone());
        }
    }
    let mut nodes = Vec::new();
    for s in &stores {
        nodes.push(node(s.factory()).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let report = run(&src, &manifest, &addrs, &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(report.bytes_sent, missing);
    for (s, r) in stores.iter().zip(&report.nodes) {
        assert_eq!(r.bytes_received, missing);
        assert_eq!(s.bytes_put(), missing);
        assert_eq!(s.object("disk.img").as_deref(), Some(&data[..]));
    }

    // The first node holds everything, the last nothing: the first still
    // relays all of it, and stores nothing.
    let full = MemStore::new();
    for (c, p) in manifest.chunks.iter().zip(&parts) {
        full.insert(c.id, p.clone());
    }
    let empty = MemStore::new();
    let (a, b) = (node(full.factory()).await, node(empty.factory()).await);
    let report = run(&src, &manifest, &[a.addr(), b.addr()], &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(report.nodes[0].bytes_written, 0);
    assert_eq!(report.nodes[1].bytes_written, data.len() as u64);
    assert_eq!(empty.object("disk.img").as_deref(), Some(&data[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_are_down_are_bypassed() {
    let data = random_bytes(1 << 20, 5);
    let (src, manifest, _) = source_for(&data);
    let (s1, s3) = (MemStore::new(), MemStore::new());
    let n1 = node(s1.factory()).await;
    let n3 = node(s3.factory()).await;
    let (d0, d2, d4) = (dead_addr().await, dead_addr().await, dead_addr().await);
    let addrs = [d0, n1.addr(), d2, n3.addr(), d4];
    let report = run(&src, &manifest, &addrs, &opts()).await;
    for dead in [d0, d2, d4] {
        let r = report.node(dead).expect("listed");
        assert!(!r.ok);
        assert!(
            r.reason.as_deref().unwrap_or("").contains("bypassed"),
            "{r:?}"
        );
    }
    assert!(report.node(n1.addr()).expect("listed").ok, "{report:#?}");
    assert!(report.node(n3.addr()).expect("listed").ok, "{report:#?}");
    assert_eq!(s1.object("disk.img").as_deref(), Some(&data[..]));
    assert_eq!(s3.object("disk.img").as_deref(), Some(&data[..]));

    // Nobody home at all: every node failed, no hang.
    let report = run(&src, &manifest, &[d0, d2], &opts()).await;
    assert!(report.nodes.iter().all(|n| !n.ok));
    assert_eq!(report.bytes_sent, 0);
}

/// A sink that slows every put and tells the test how far it got.
struct Slow {
    inner: Arc<dyn ChunkSink>,
    puts: Arc<AtomicU64>,
    delay: Duration,
}

impl ChunkSource for Slow {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        self.inner.get(id)
    }
}

impl ChunkSink for Slow {
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError> {
        self.inner.has(ids)
    }
    fn put(&self, id: &ChunkId, data: Bytes) -> Result<(), BoxError> {
        std::thread::sleep(self.delay);
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put(id, data)
    }
    fn finish(&self, m: &Manifest) -> Result<u64, BoxError> {
        self.inner.finish(m)
    }
}

fn slow_factory(
    store: &Arc<MemStore>,
    puts: Arc<AtomicU64>,
    delay: Duration,
) -> Arc<dyn SinkFactory> {
    let inner = store.factory();
    Arc::new(
        move |info: &TransferInfo| -> Result<Arc<dyn ChunkSink>, BoxError> {
            Ok(Arc::new(Slow {
                inner: inner.open(info)?,
                puts: Arc::clone(&puts),
                delay,
            }))
        },
    )
}

async fn kill_mid_transfer(n: usize, victims: &[usize]) {
    let data = random_bytes(4 << 20, 6);
    let (src, manifest, _) = source_for(&data);
    let stores: Vec<Arc<MemStore>> = (0..n).map(|_| MemStore::new()).collect();
    let puts = Arc::new(AtomicU64::new(0));
    let mut nodes = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        // Every node is a little slow so the kill lands mid-stream; the
        // first victim's progress decides when.
        let counter = if i == victims[0] {
            Arc::clone(&puts)
        } else {
            Arc::new(AtomicU64::new(0))
        };
        nodes.push(node(slow_factory(s, counter, Duration::from_millis(3))).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let total = manifest.len() as u64;
    let opts = opts();
    let prop = {
        let (src, manifest, addrs) = (src.clone(), manifest.clone(), addrs.clone());
        tokio::spawn(async move { run(&src, &manifest, &addrs, &opts).await })
    };
    // Kill a quarter of the way through the first victim's chunks.
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while puts.load(Ordering::SeqCst) < total / 4 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "victim never started");
    for v in victims {
        nodes[*v].kill();
    }
    let report = prop.await.expect("join");
    for v in victims {
        let r = report.node(addrs[*v]).expect("listed");
        assert!(!r.ok, "{report:#?}");
        assert!(
            r.reason.as_deref().unwrap_or("").contains("bypassed"),
            "{r:?}"
        );
        assert!(stores[*v].object("disk.img").is_none());
    }
    for (i, s) in stores.iter().enumerate() {
        if victims.contains(&i) {
            continue;
        }
        assert!(report.nodes[i].ok, "node {i}: {report:#?}");
        assert_eq!(s.object("disk.img").as_deref(), Some(&data[..]), "node {i}");
    }
    assert_eq!(report.failed().count(), victims.len(), "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middle_node_killed_mid_transfer_is_bypassed() {
    kill_mid_transfer(4, &[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_node_killed_mid_transfer_is_bypassed() {
    kill_mid_transfer(4, &[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_node_killed_mid_transfer_is_reported() {
    kill_mid_transfer(4, &[3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_nodes_killed_mid_transfer_are_bypassed() {
    kill_mid_transfer(6, &[1, 2, 4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_resumes_after_bypass() {
    let data = random_bytes(3 << 20, 7);
    let (src, manifest, _) = source_for(&data);
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let puts = Arc::new(AtomicU64::new(0));
    let victim_store = MemStore::new();
    let n0 = node(slow_factory(
        &victim_store,
        Arc::clone(&puts),
        Duration::from_millis(3),
    ))
    .await;
    let n1 = node(Arc::new(FileSinkFactory::new(dirs[1].path()))).await;
    let n2 = node(Arc::new(FileSinkFactory::new(dirs[2].path()))).await;
    let addrs = vec![n0.addr(), n1.addr(), n2.addr()];
    let total = manifest.len() as u64;
    let prop = {
        let (src, manifest, addrs) = (src.clone(), manifest.clone(), addrs.clone());
        tokio::spawn(async move { run(&src, &manifest, &addrs, &opts()).await })
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while puts.load(Ordering::SeqCst) < total / 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("victim progressed");
    n0.kill();
    let report = prop.await.expect("join");
    assert!(!report.nodes[0].ok);
    assert!(report.nodes[1].ok && report.nodes[2].ok, "{report:#?}");
    // Node 1 resumed: it did not get the whole image a second time.
    assert!(
        report.nodes[1].bytes_received < data.len() as u64,
        "{report:#?}"
    );
    for d in &dirs[1..] {
        let got = std::fs::read(d.path().join("disk.img")).expect("file");
        assert!(got == data[..], "file differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_of_chains_delivers_to_every_node() {
    let data = random_bytes(1 << 20, 8);
    let (src, manifest, _) = source_for(&data);
    let stores: Vec<Arc<MemStore>> = (0..5).map(|_| MemStore::new()).collect();
    let mut nodes = Vec::new();
    for s in &stores {
        nodes.push(node(s.factory()).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let chains = chain_broadcast::split_chains(&addrs, 2);
    let source: Arc<dyn ChunkSource> = src.clone();
    let report = chain_broadcast::propagate_chains(source, "disk.img", manifest, &chains, &opts())
        .await
        .expect("ran");
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(report.bytes_sent, 2 * data.len() as u64);
    for s in &stores {
        assert_eq!(s.object("disk.img").as_deref(), Some(&data[..]));
    }
}

/// A sink whose puts block until released: a node that is alive but stuck.
struct Stuck {
    inner: Arc<dyn ChunkSink>,
    release: Arc<std::sync::atomic::AtomicBool>,
}

impl ChunkSource for Stuck {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        self.inner.get(id)
    }
}

impl ChunkSink for Stuck {
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError> {
        self.inner.has(ids)
    }
    fn put(&self, id: &ChunkId, data: Bytes) -> Result<(), BoxError> {
        for _ in 0..3000 {
            if self.release.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.inner.put(id, data)
    }
    fn finish(&self, m: &Manifest) -> Result<u64, BoxError> {
        self.inner.finish(m)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_nodes_are_bypassed_after_timeouts() {
    let data = random_bytes(4 << 20, 9);
    let (src, manifest, _) = source_for(&data);
    let fast = Options {
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_millis(500),
        finish_timeout: Duration::from_secs(2),
        ..Options::default()
    };

    // Accepts connections and never answers.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    let hole_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    // Answers HELLO, then stops storing (and so, soon, reading).
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stuck_store = MemStore::new();
    let stuck = {
        let inner = stuck_store.factory();
        let release = Arc::clone(&release);
        node(Arc::new(
            move |info: &TransferInfo| -> Result<Arc<dyn ChunkSink>, BoxError> {
                Ok(Arc::new(Stuck {
                    inner: inner.open(info)?,
                    release: Arc::clone(&release),
                }))
            },
        ))
        .await
    };
    let (s1, s2) = (MemStore::new(), MemStore::new());
    let (n1, n2) = (node(s1.factory()).await, node(s2.factory()).await);
    let addrs = [hole_addr, n1.addr(), stuck.addr(), n2.addr()];
    let started = std::time::Instant::now();
    let report = run(&src, &manifest, &addrs, &fast).await;
    release.store(true, Ordering::SeqCst);
    hole_task.abort();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!report.node(hole_addr).expect("listed").ok);
    assert!(
        !report.node(stuck.addr()).expect("listed").ok,
        "{report:#?}"
    );
    assert!(report.node(n1.addr()).expect("listed").ok, "{report:#?}");
    assert!(report.node(n2.addr()).expect("listed").ok, "{report:#?}");
    assert_eq!(s1.object("disk.img").as_deref(), Some(&data[..]));
    assert_eq!(s2.object("disk.img").as_deref(), Some(&data[..]));
    assert!(stuck_store.object("disk.img").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stalled_mid_stream_is_bypassed() {
    // More data than the queues and socket buffers between two hops hold,
    // so the stalled node pushes back on its predecessor's writes.
    let data = random_bytes(32 << 20, 10);
    let (src, manifest, _) = source_for(&data);
    let fast = Options {
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_millis(500),
        finish_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    let small = ServeOptions {
        queue_bytes: 256 << 10,
        ..ServeOptions::default()
    };
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stuck_store = MemStore::new();
    let inner = stuck_store.factory();
    let rel = Arc::clone(&release);
    let stuck = Node::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        Arc::new(
            move |info: &TransferInfo| -> Result<Arc<dyn ChunkSink>, BoxError> {
                Ok(Arc::new(Stuck {
                    inner: inner.open(info)?,
                    release: Arc::clone(&rel),
                }))
            },
        ),
        small.clone(),
    )
    .await
    .expect("bind");
    // Healthy nodes before the stalled one must not be bypassed while it
    // holds everything up, and a slow but steady tail is not a failure.
    let (s0, s1, s2) = (MemStore::new(), MemStore::new(), MemStore::new());
    let n0 = Node::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        s0.factory(),
        small.clone(),
    )
    .await
    .expect("bind");
    let n1 = Node::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        s1.factory(),
        small.clone(),
    )
    .await
    .expect("bind");
    let n2 = Node::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        slow_factory(&s2, Arc::new(AtomicU64::new(0)), Duration::from_millis(1)),
        small,
    )
    .await
    .expect("bind");
    let addrs = [n0.addr(), n1.addr(), stuck.addr(), n2.addr()];
    let report = run(&src, &manifest, &addrs, &fast).await;
    release.store(true, Ordering::SeqCst);
    let r = report.node(stuck.addr()).expect("listed");
    assert!(!r.ok, "{report:#?}");
    assert!(
        r.reason.as_deref().unwrap_or("").contains("timed out"),
        "{r:?}"
    );
    assert_eq!(report.failed().count(), 1, "{report:#?}");
    for s in [&s0, &s1, &s2] {
        assert!(s.object("disk.img").as_deref() == Some(&data[..]));
    }
    assert!(stuck_store.object("disk.img").is_none());
}

/// A store that takes its time to answer `has`.
struct SlowHas(Arc<dyn ChunkSink>);

impl ChunkSource for SlowHas {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        self.0.get(id)
    }
}

impl ChunkSink for SlowHas {
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError> {
        std::thread::sleep(Duration::from_millis(1500));
        self.0.has(ids)
    }
    fn put(&self, id: &ChunkId, data: Bytes) -> Result<(), BoxError> {
        self.0.put(id, data)
    }
    fn finish(&self, m: &Manifest) -> Result<u64, BoxError> {
        std::thread::sleep(Duration::from_millis(1500));
        self.0.finish(m)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_alive_stores_are_not_bypassed() {
    let data = random_bytes(1 << 20, 11);
    let (src, manifest, _) = source_for(&data);
    let fast = Options {
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_millis(500),
        finish_timeout: Duration::from_secs(10),
        ..Options::default()
    };
    let stores: Vec<Arc<MemStore>> = (0..3).map(|_| MemStore::new()).collect();
    let mut nodes = Vec::new();
    for s in &stores {
        let inner = s.factory();
        nodes.push(
            node(Arc::new(
                move |info: &TransferInfo| -> Result<Arc<dyn ChunkSink>, BoxError> {
                    Ok(Arc::new(SlowHas(inner.open(info)?)))
                },
            ))
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let report = run(&src, &manifest, &addrs, &fast).await;
    assert!(report.all_ok(), "{report:#?}");
    for s in &stores {
        assert_eq!(s.object("disk.img").as_deref(), Some(&data[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_reuses_the_previous_version() {
    let v1 = random_bytes(2 << 20, 12);
    // Version 2: every fourth chunk rewritten.
    let mut v2 = v1.to_vec();
    for (i, c) in v2.chunks_mut(CHUNK).enumerate() {
        if i % 4 == 0 {
            c.iter_mut().for_each(|b| *b = b.wrapping_add(1));
        }
    }
    let v2 = Bytes::from(v2);
    let (src, manifest, parts) = source_for(&v2);
    let changed: u64 = parts.iter().step_by(4).map(|p| p.len() as u64).sum();
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    for d in &dirs {
        std::fs::write(d.path().join("disk.img"), &v1).expect("v1");
    }
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(node(Arc::new(FileSinkFactory::new(d.path()))).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let report = run(&src, &manifest, &addrs, &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(report.bytes_sent, changed);
    for (d, r) in dirs.iter().zip(&report.nodes) {
        assert_eq!(r.bytes_received, changed);
        let got = std::fs::read(d.path().join("disk.img")).expect("file");
        assert!(got == v2[..], "file differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_resumes_a_partial_file_after_restart() {
    let data = random_bytes(2 << 20, 13);
    let (src, manifest, parts) = source_for(&data);
    let dir = tempfile::tempdir().expect("tempdir");
    let info = TransferInfo {
        transfer_id: 99,
        name: "disk.img".into(),
        manifest: Arc::clone(&manifest),
    };
    // A first agent stored every other chunk, then died.
    {
        let factory = FileSinkFactory::new(dir.path());
        let sink = factory.open(&info).expect("open");
        for (c, p) in manifest.chunks.iter().zip(&parts).step_by(2) {
            sink.put(&c.id, p.clone()).expect("put");
        }
    }
    assert!(!dir.path().join("disk.img").exists());
    let half: u64 = parts.iter().step_by(2).map(|p| p.len() as u64).sum();
    // A new agent picks the transfer up where it stopped.
    let n = node(Arc::new(
        FileSinkFactory::new(dir.path()).seed_from_existing(false),
    ))
    .await;
    let o = Options {
        transfer_id: Some(99),
        ..opts()
    };
    let report = run(&src, &manifest, &[n.addr()], &o).await;
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(report.nodes[0].bytes_received, data.len() as u64 - half);
    let got = std::fs::read(dir.path().join("disk.img")).expect("file");
    assert!(got == data[..], "file differs");
}

/// A source that hands out chunks slowly and notes when it gave the last.
struct SlowSource {
    inner: Arc<MemStore>,
    gets: AtomicU64,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl ChunkSource for SlowSource {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        std::thread::sleep(Duration::from_millis(5));
        self.gets.fetch_add(1, Ordering::SeqCst);
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
        self.inner.get(id)
    }
}

/// A sink that notes when its first chunk arrived.
struct FirstPut {
    inner: Arc<dyn ChunkSink>,
    first: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl ChunkSource for FirstPut {
    fn get(&self, id: &ChunkId) -> Result<Bytes, BoxError> {
        self.inner.get(id)
    }
}

impl ChunkSink for FirstPut {
    fn has(&self, ids: &[ChunkId]) -> Result<Vec<bool>, BoxError> {
        self.inner.has(ids)
    }
    fn put(&self, id: &ChunkId, data: Bytes) -> Result<(), BoxError> {
        self.first
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(std::time::Instant::now);
        self.inner.put(id, data)
    }
    fn finish(&self, m: &Manifest) -> Result<u64, BoxError> {
        self.inner.finish(m)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_cut_through() {
    let data = random_bytes(4 << 20, 14);
    let (src, manifest, _) = source_for(&data);
    let slow = Arc::new(SlowSource {
        inner: src,
        gets: AtomicU64::new(0),
        last: std::sync::Mutex::new(None),
    });
    let stores: Vec<Arc<MemStore>> = (0..4).map(|_| MemStore::new()).collect();
    let first = Arc::new(std::sync::Mutex::new(None));
    let mut nodes = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        if i < 3 {
            nodes.push(node(s.factory()).await);
            continue;
        }
        let inner = s.factory();
        let first = Arc::clone(&first);
        nodes.push(
            node(Arc::new(
                move |info: &TransferInfo| -> Result<Arc<dyn ChunkSink>, BoxError> {
                    Ok(Arc::new(FirstPut {
                        inner: inner.open(info)?,
                        first: Arc::clone(&first),
                    }))
                },
            ))
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let source: Arc<dyn ChunkSource> = slow.clone();
    let report = propagate(source, "disk.img", manifest, &addrs, &opts())
        .await
        .expect("ran");
    assert!(report.all_ok(), "{report:#?}");
    let first = (*first.lock().expect("lock")).expect("tail stored something");
    let last = (*slow.last.lock().expect("lock")).expect("source read");
    // The tail, three hops down, stored its first chunk long before the
    // repository had even read its last one: no hop waits for the image.
    assert!(first < last, "tail started after the source finished");
    assert!(
        last - first > Duration::from_millis(200),
        "{:?}",
        last - first
    );
    assert_eq!(stores[3].object("disk.img").as_deref(), Some(&data[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_object_is_delivered() {
    let (src, manifest, _) = source_for(&Bytes::new());
    assert!(manifest.is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = MemStore::new();
    let a = node(store.factory()).await;
    let b = node(Arc::new(FileSinkFactory::new(dir.path()))).await;
    let report = run(&src, &manifest, &[a.addr(), b.addr()], &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(store.object("disk.img").as_deref(), Some(&[][..]));
    assert_eq!(
        std::fs::read(dir.path().join("disk.img"))
            .expect("file")
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hop_sends_only_what_someone_below_needs() {
    let data = random_bytes(16 * CHUNK, 15);
    let (src, manifest, parts) = source_for(&data);
    let holds: [std::ops::Range<usize>; 3] = [0..8, 4..12, 8..16];
    let extra_c = 0..4;
    let stores: Vec<Arc<MemStore>> = (0..3).map(|_| MemStore::new()).collect();
    for (s, range) in stores.iter().zip(&holds) {
        for i in range.clone() {
            s.insert(manifest.chunks[i].id, parts[i].clone());
        }
    }
    for i in extra_c {
        stores[2].insert(manifest.chunks[i].id, parts[i].clone());
    }
    // C holds 0..4 and 8..16; B∩C = 8..12; A∩B∩C = nothing.
    let mut nodes = Vec::new();
    for s in &stores {
        nodes.push(node(s.factory()).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let report = run(&src, &manifest, &addrs, &opts()).await;
    assert!(report.all_ok(), "{report:#?}");
    let c = CHUNK as u64;
    assert_eq!(report.bytes_sent, 16 * c);
    let got: Vec<(u64, u64)> = report
        .nodes
        .iter()
        .map(|n| (n.bytes_received / c, n.bytes_written / c))
        .collect();
    // (chunks received, chunks written) per node.
    assert_eq!(got, vec![(16, 8), (12, 8), (4, 4)], "{report:#?}");
    for s in &stores {
        assert_eq!(s.object("disk.img").as_deref(), Some(&data[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_lets_transfers_finish() {
    let data = random_bytes(2 << 20, 16);
    let (src, manifest, _) = source_for(&data);
    let store = MemStore::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let puts = Arc::new(AtomicU64::new(0));
    let agent = tokio::spawn(chain_broadcast::serve_until(
        listener,
        slow_factory(&store, Arc::clone(&puts), Duration::from_millis(3)),
        ServeOptions::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let prop = {
        let (src, manifest) = (src.clone(), manifest.clone());
        tokio::spawn(async move { run(&src, &manifest, &[addr], &opts()).await })
    };
    while puts.load(Ordering::SeqCst) < 4 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = stop_tx.send(());
    let report = prop.await.expect("join");
    assert!(report.all_ok(), "{report:#?}");
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent stopped")
        .expect("join")
        .expect("served");
    assert_eq!(store.object("disk.img").as_deref(), Some(&data[..]));
    // No longer listening.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_sink_resupplies_its_successor_after_a_bypass() {
    let data = random_bytes(4 << 20, 17);
    let (src, manifest, _) = source_for(&data);
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let puts = Arc::new(AtomicU64::new(0));
    let victim_store = MemStore::new();
    let a = node(Arc::new(FileSinkFactory::new(dirs[0].path()))).await;
    let victim = node(slow_factory(
        &victim_store,
        Arc::clone(&puts),
        Duration::from_millis(3),
    ))
    .await;
    let c = node(Arc::new(FileSinkFactory::new(dirs[1].path()))).await;
    let addrs = vec![a.addr(), victim.addr(), c.addr()];
    let total = manifest.len() as u64;
    let prop = {
        let (src, manifest, addrs) = (src.clone(), manifest.clone(), addrs.clone());
        tokio::spawn(async move { run(&src, &manifest, &addrs, &opts()).await })
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        while puts.load(Ordering::SeqCst) < total / 4 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("victim progressed");
    victim.kill();
    let report = prop.await.expect("join");
    assert!(!report.nodes[1].ok, "{report:#?}");
    assert!(report.nodes[0].ok && report.nodes[2].ok, "{report:#?}");
    // The repository sent the image once: A refilled C from its own copy.
    assert_eq!(report.bytes_sent, data.len() as u64, "{report:#?}");
    for d in &dirs {
        let got = std::fs::read(d.path().join("disk.img")).expect("file");
        assert!(got == data[..], "file differs");
    }
}
