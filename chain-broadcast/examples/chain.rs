//! A stand-alone driver for measuring the chain before it is wired into
//! `strato`:
//!
//! ```text
//! chain agent --listen ADDR (--out-dir DIR [--no-sync] | --discard)
//! chain send FILE --nodes H:P,H:P,... [--chunk-kib N] [--name NAME]
//! chain loopback --mib N --nodes K [--chunk-kib N]    (in-process, discarding sinks)
//! ```
//! `send` and `loopback` print the report as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chain_broadcast::{
    propagate, ChunkSource, DiscardSinkFactory, FileSinkFactory, FileSource, Manifest, MemStore,
    Node, Options, ServeOptions, SinkFactory,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn parse_nodes(s: &str) -> Res<Vec<SocketAddr>> {
    s.split(',')
        .map(|a| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("{a}: {e}").into())
        })
        .collect()
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chunk = flag(&args, "--chunk-kib")
        .map(|s| s.parse::<usize>())
        .transpose()?
        .unwrap_or(256)
        << 10;
    match args.first().map(String::as_str) {
        Some("agent") => {
            let listen: SocketAddr = flag(&args, "--listen").ok_or("--listen")?.parse()?;
            let factory: Arc<dyn SinkFactory> = match flag(&args, "--out-dir") {
                Some(d) => Arc::new(
                    FileSinkFactory::new(PathBuf::from(d))
                        .durable(!args.iter().any(|a| a == "--no-sync")),
                ),
                None => Arc::new(DiscardSinkFactory::new()),
            };
            let listener = tokio::net::TcpListener::bind(listen).await?;
            eprintln!("listening on {}", listener.local_addr()?);
            chain_broadcast::serve(listener, factory, ServeOptions::default()).await?;
        }
        Some("send") => {
            let file = PathBuf::from(args.get(1).ok_or("FILE")?);
            let nodes = parse_nodes(&flag(&args, "--nodes").ok_or("--nodes")?)?;
            let name = flag(&args, "--name").unwrap_or_else(|| {
                file.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "object".into())
            });
            let (src, manifest) = FileSource::open(&file, chunk)?;
            let src: Arc<dyn ChunkSource> = src;
            let report =
                propagate(src, &name, Arc::new(manifest), &nodes, &Options::default()).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Some("loopback") => {
            let mib: usize = flag(&args, "--mib")
                .unwrap_or_else(|| "256".into())
                .parse()?;
            let k: usize = flag(&args, "--nodes")
                .unwrap_or_else(|| "4".into())
                .parse()?;
            let mut data = vec![0u8; mib << 20];
            let mut x: u64 = 0x243f_6a88_85a3_08d3;
            for b in data.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let n = b.len();
                b.copy_from_slice(&x.to_le_bytes()[..n]);
            }
            let data = bytes::Bytes::from(data);
            let (manifest, parts) = Manifest::from_fixed_chunks(&data, chunk);
            let store = MemStore::new();
            for (c, p) in manifest.chunks.iter().zip(parts) {
                store.insert(c.id, p);
            }
            let mut nodes = Vec::new();
            for _ in 0..k {
                nodes.push(
                    Node::spawn(
                        "127.0.0.1:0".parse()?,
                        Arc::new(DiscardSinkFactory::new()),
                        ServeOptions::default(),
                    )
                    .await?,
                );
            }
            let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
            let src: Arc<dyn ChunkSource> = store;
            let report = propagate(
                src,
                "bench",
                Arc::new(manifest),
                &addrs,
                &Options::default(),
            )
            .await?;
            let secs = report.elapsed.as_secs_f64();
            eprintln!(
                "{mib} MiB to {k} nodes in {secs:.2}s = {:.0} MiB/s per node, all ok: {}",
                mib as f64 / secs,
                report.all_ok()
            );
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        _ => {
            eprintln!("usage: chain (agent|send|loopback) ...");
            std::process::exit(2);
        }
    }
    Ok(())
}
