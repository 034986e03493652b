//! The multicast data path: chunks fetched ahead from the source and cached
//! for repair rounds, datagrams paced out on a blocking thread, and the
//! round markers.

use super::*;

/// Chunks kept for repair rounds, up to a byte budget (first come first
/// kept: repairs hit every chunk about equally).
pub(super) struct ChunkCache {
    limit: u64,
    inner: Mutex<(u64, HashMap<usize, Bytes>)>,
}

impl ChunkCache {
    pub(super) fn new(limit: u64) -> ChunkCache {
        ChunkCache {
            limit,
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    pub(super) fn get(&self, i: usize) -> Option<Bytes> {
        self.inner.lock().1.get(&i).cloned()
    }

    pub(super) fn put(&self, i: usize, data: &Bytes) {
        let mut g = self.inner.lock();
        if g.0 + data.len() as u64 <= self.limit && !g.1.contains_key(&i) {
            g.0 += data.len() as u64;
            g.1.insert(i, data.clone());
        }
    }
}

/// Sends the pieces in `needs`: chunks are fetched ahead (in order, a few
/// at a time) while a blocking thread paces the datagrams out. Returns
/// (datagrams, bytes on the wire).
#[allow(clippy::too_many_arguments)]
pub(super) async fn send_round(
    source: &Source,
    layout: &Arc<Layout>,
    needs: &Arc<PieceSet>,
    sock: Arc<UdpSocket>,
    group: SocketAddrV4,
    session: u32,
    rate_bits: u64,
    cache: Arc<ChunkCache>,
    progress: Arc<SendProgress>,
) -> Result<(u64, u64), McastError> {
    const AHEAD: usize = 8;
    let chunks: Vec<usize> = (0..layout.chunks.len())
        .filter(|&c| layout.piece_range(c).any(|p| needs.contains(p)))
        .collect();
    progress
        .planned
        .fetch_add(needs.count() * layout.payload as u64, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<(usize, Bytes)>(AHEAD);
    let (layout2, needs2) = (Arc::clone(layout), Arc::clone(needs));
    let pacer = tokio::task::spawn_blocking(move || -> Result<(u64, u64), McastError> {
        // 256 KiB of burst: a sender thread descheduled for a few ms on a
        // busy host catches up instead of losing the time, and still fits
        // a shaper's queue (a 50 ms tbf queue at 200 Mbit/s holds 1.25 MB).
        let mut bucket = TokenBucket::new(rate_bits, 256 * 1024);
        let mut buf = vec![0u8; wire::HEADER + layout2.payload as usize];
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some((c, data)) = rx.blocking_recv() {
            for p in layout2.piece_range(c) {
                if !needs2.contains(p) {
                    continue;
                }
                let (off, len) = layout2.piece_bytes(c, p);
                let h = Header {
                    kind: wire::DATA,
                    session,
                    index: c as u32,
                    offset: off,
                };
                let mut hdr = [0u8; wire::HEADER];
                h.encode(&mut hdr);
                buf[..wire::HEADER].copy_from_slice(&hdr);
                let end = wire::HEADER + len as usize;
                buf[wire::HEADER..end].copy_from_slice(&data[off as usize..(off + len) as usize]);
                bucket.wait(end + wire::LINK_OVERHEAD);
                send_dgram(&sock, &buf[..end], group)?;
                n += 1;
                bytes += (end + wire::LINK_OVERHEAD) as u64;
                progress.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
            }
        }
        Ok((n, bytes))
    });
    let mut fetched = futures::stream::iter(chunks.into_iter().map(|c| {
        let cache = Arc::clone(&cache);
        let source = source.clone();
        let id = layout.chunks[c].id;
        let len = layout.chunks[c].len;
        async move {
            if let Some(d) = cache.get(c) {
                return Ok((c, d));
            }
            let d = fetch_chunk(&source, id).await?;
            if d.len() != len as usize {
                return Err(McastError::Integrity(id.to_hex()));
            }
            cache.put(c, &d);
            Ok::<_, McastError>((c, d))
        }
    }))
    .buffered(AHEAD);
    let mut fetch_err = None;
    while let Some(r) = fetched.next().await {
        match r {
            Ok(item) => {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                fetch_err = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let sent = pacer.await.map_err(|e| McastError::Task(e.to_string()))??;
    match fetch_err {
        Some(e) => Err(e),
        None => Ok(sent),
    }
}

/// One datagram; a full socket buffer (ENOBUFS/EAGAIN) is waited out a
/// bounded number of times rather than dropping the piece.
pub(super) fn send_dgram(sock: &UdpSocket, buf: &[u8], to: SocketAddrV4) -> Result<(), McastError> {
    let mut tries = 0;
    loop {
        match sock.send_to(buf, to) {
            Ok(_) => return Ok(()),
            Err(e)
                if tries < 1000
                    && (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.raw_os_error() == Some(105)) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => {
                return Err(McastError::Io {
                    what: format!("sending to {to}"),
                    source: e,
                })
            }
        }
    }
}

/// End-of-round marker, three times a millisecond apart (it can be lost
/// like any datagram; receivers also fall back to a timeout).
pub(super) async fn send_marker(sock: &UdpSocket, group: SocketAddrV4, session: u32, round: u32) {
    let mut hdr = [0u8; wire::HEADER];
    Header {
        kind: wire::ROUND_END,
        session,
        index: round,
        offset: 0,
    }
    .encode(&mut hdr);
    for _ in 0..3 {
        if let Err(e) = sock.send_to(&hdr, group) {
            tracing::debug!("round marker: {e}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
