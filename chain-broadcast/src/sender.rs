//! The head of the chain: streams each chunk some node needs, once.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::info;

use crate::error::{Error, Result};
use crate::forward::{pump, Ctx, Downstream, Input, Resupply};
use crate::frame::{MAX_CHAIN, MAX_NAME};
use crate::manifest::{ChunkId, ChunkRef, Manifest, TransferInfo};
use crate::options::{queue_len, Options};
use crate::relay::blocking;
use crate::report::{assemble, Report};
use crate::sink::ChunkSource;

fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn get_verified(source: &dyn ChunkSource, c: &ChunkRef) -> Result<bytes::Bytes> {
    let data = source.get(&c.id).map_err(Error::storage)?;
    if data.len() != c.len as usize || ChunkId::of(&data) != c.id {
        return Err(Error::Storage(format!(
            "source returned wrong bytes for chunk {}",
            c.id
        )));
    }
    Ok(data)
}

/// Sends the object `name` (its chunks read from `source`) to every node of
/// `nodes`, in that order: node 1 receives it from us and forwards it to
/// node 2 as it arrives, and so on. Only chunks some node lacks are sent,
/// each once. Nodes that are down or fail are bypassed and reported failed.
///
/// Returns an error only if the propagation could not run at all (invalid
/// input, or `source` failing); node failures are in the [`Report`].
pub async fn propagate(
    source: Arc<dyn ChunkSource>,
    name: &str,
    manifest: Arc<Manifest>,
    nodes: &[SocketAddr],
    opts: &Options,
) -> Result<Report> {
    let start = Instant::now();
    if nodes.is_empty() || nodes.len() > MAX_CHAIN {
        return Err(Error::Invalid(format!(
            "{} nodes (1 to {MAX_CHAIN} allowed)",
            nodes.len()
        )));
    }
    if name.len() > MAX_NAME {
        return Err(Error::Invalid(format!(
            "object name longer than {MAX_NAME} bytes"
        )));
    }
    let distinct_nodes: HashSet<&SocketAddr> = nodes.iter().collect();
    if distinct_nodes.len() != nodes.len() {
        return Err(Error::Invalid("a node appears twice in the chain".into()));
    }
    // The HELLO itself must fit in a frame.
    if manifest.len() * 36 + nodes.len() * 19 + name.len() + 64 > opts.max_frame as usize {
        return Err(Error::Invalid("manifest too large for one frame".into()));
    }
    manifest
        .validate(opts.max_frame.saturating_sub(32))
        .map_err(Error::Invalid)?;
    let transfer_id = opts.transfer_id.unwrap_or_else(random_id);
    let ctx = Arc::new(Ctx {
        info: TransferInfo {
            transfer_id,
            name: name.to_string(),
            manifest: Arc::clone(&manifest),
        },
        connect_timeout: opts.connect_timeout,
        io_timeout: opts.io_timeout,
        finish_timeout: opts.finish_timeout,
        max_frame: opts.max_frame,
        auth: opts.session.clone(),
        forged: Arc::default(),
    });
    let mut ds = Downstream::connect(Arc::clone(&ctx), nodes.to_vec(), opts.progress.clone()).await;

    let needed: Vec<ChunkRef> = match ds.have() {
        Some(have) => {
            let mut needed_ids = HashSet::new();
            for (c, h) in manifest.chunks.iter().zip(have) {
                if !h {
                    needed_ids.insert(c.id);
                }
            }
            manifest
                .distinct()
                .into_iter()
                .filter(|c| needed_ids.contains(&c.id))
                .collect()
        }
        None => Vec::new(),
    };
    let planned: u64 = needed.iter().map(|c| u64::from(c.len)).sum();
    if let Some(p) = &opts.progress {
        p.bytes_planned.fetch_add(planned, Ordering::Relaxed);
    }
    info!(
        transfer = transfer_id,
        name,
        nodes = nodes.len(),
        chunks = needed.len(),
        bytes = planned,
        "propagation started"
    );
    ds.set_expected(needed.iter().map(|c| c.id).collect());

    let (tx, rx) = mpsc::channel::<Input>(queue_len(opts.queue_bytes, &manifest));
    let producer = {
        let source = Arc::clone(&source);
        tokio::task::spawn_blocking(move || -> Result<()> {
            for c in &needed {
                let data = get_verified(source.as_ref(), c)?;
                if tx.blocking_send(Input::Chunk(c.id, data)).is_err() {
                    return Ok(());
                }
            }
            let _ = tx.blocking_send(Input::End);
            Ok(())
        })
    };
    let resupply: Resupply = {
        let lens = manifest.lengths();
        Arc::new(move |id: ChunkId| {
            let source = Arc::clone(&source);
            let len = lens.get(&id).copied().unwrap_or(0);
            Box::pin(async move {
                blocking(move || Ok(get_verified(source.as_ref(), &ChunkRef { id, len })?)).await
            })
        })
    };
    let (produced, pumped) = tokio::join!(producer, pump(ds, rx, resupply));
    match produced {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(Error::Storage(format!("source task failed: {e}"))),
    }
    let Some((reports, bytes_sent)) = pumped else {
        return Err(Error::Storage("source ended early".into()));
    };
    let report = Report {
        transfer_id,
        nodes: assemble(nodes, reports),
        bytes_sent,
        object_size: manifest.size(),
        forged_control_frames: ctx.forged.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    };
    info!(
        transfer = transfer_id,
        ok = report.all_ok(),
        secs = report.elapsed.as_secs_f64(),
        "propagation done"
    );
    Ok(report)
}

/// Cuts `nodes` into `fanout` chains of near-equal length, keeping the given
/// order within each (so a topology-aware order keeps neighbours together).
pub fn split_chains(nodes: &[SocketAddr], fanout: usize) -> Vec<Vec<SocketAddr>> {
    let k = fanout.clamp(1, nodes.len().max(1));
    let base = nodes.len() / k;
    let extra = nodes.len() % k;
    let mut out = Vec::with_capacity(k);
    let mut at = 0;
    for i in 0..k {
        let n = base + usize::from(i < extra);
        out.push(nodes[at..at + n].to_vec());
        at += n;
    }
    out.retain(|c| !c.is_empty());
    out
}

/// A tree of chains: the sender feeds each chain of `chains` at once (so it
/// sends up to `chains.len()` copies) and every chain relays as in
/// [`propagate`]. Useful when one chain's per-hop delay or a single slow
/// node would dominate. The report lists nodes chain after chain.
pub async fn propagate_chains(
    source: Arc<dyn ChunkSource>,
    name: &str,
    manifest: Arc<Manifest>,
    chains: &[Vec<SocketAddr>],
    opts: &Options,
) -> Result<Report> {
    let start = Instant::now();
    let all: Vec<SocketAddr> = chains.iter().flatten().copied().collect();
    let distinct: HashSet<&SocketAddr> = all.iter().collect();
    if distinct.len() != all.len() {
        return Err(Error::Invalid("a node appears twice in the tree".into()));
    }
    let mut opts = opts.clone();
    let transfer_id = opts.transfer_id.unwrap_or_else(random_id);
    opts.transfer_id = Some(transfer_id);
    let runs = chains.iter().filter(|c| !c.is_empty()).map(|chain| {
        propagate(
            Arc::clone(&source),
            name,
            Arc::clone(&manifest),
            chain,
            &opts,
        )
    });
    let mut nodes = Vec::with_capacity(all.len());
    let (mut bytes_sent, mut forged) = (0, 0);
    for r in futures::future::join_all(runs).await {
        let r = r?;
        bytes_sent += r.bytes_sent;
        forged += r.forged_control_frames;
        nodes.extend(r.nodes);
    }
    Ok(Report {
        transfer_id,
        nodes,
        bytes_sent,
        object_size: manifest.size(),
        forged_control_frames: forged,
        elapsed: start.elapsed(),
    })
}

/// Resolves `host:port` strings (names or literal addresses) to socket
/// addresses, keeping their order (the chain order). A name's first
/// address is used.
pub async fn resolve_nodes<S: AsRef<str>>(specs: &[S]) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let s = s.as_ref().trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            out.push(a);
            continue;
        }
        let mut addrs = tokio::net::lookup_host(s)
            .await
            .map_err(|e| Error::Invalid(format!("node {s:?}: {e}")))?;
        let a = addrs
            .next()
            .ok_or_else(|| Error::Invalid(format!("node {s:?} has no address")))?;
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_chains_keeps_order_and_balance() {
        let nodes: Vec<SocketAddr> = (0..7)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 1)))
            .collect();
        let c = split_chains(&nodes, 3);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 2, 2]);
        assert_eq!(c.concat(), nodes);
        assert_eq!(split_chains(&nodes, 1), vec![nodes.clone()]);
        assert_eq!(split_chains(&nodes, 100).len(), 7);
        assert!(split_chains(&[], 3).is_empty());
    }

    #[tokio::test]
    async fn resolves_literal_and_named_nodes() {
        let got = resolve_nodes(&["127.0.0.1:7000", "localhost:7001"])
            .await
            .expect("resolved");
        assert_eq!(got[0], SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(got[1].port(), 7001);
        assert!(got[1].ip().is_loopback());
        assert!(resolve_nodes(&["no-port"]).await.is_err());
    }
}
