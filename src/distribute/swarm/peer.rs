//! Both ends of one peer connection: [`download`] asks a peer for chunks
//! (a bounded window of requests in flight, each answer verified against
//! the manifest's id before it is stored), [`serve`] answers a peer from
//! what this node holds.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::schedule::PeerId;
use super::wire::{self, Frame, Limits};
use super::Shared;
use crate::store::ChunkId;

/// How long a handshake step may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// How often a connected peer is asked for its bitmap while there is
/// nothing to ask it for.
const HAVE_EVERY: Duration = Duration::from_millis(300);

/// Why a download connection ended.
#[derive(Debug)]
pub enum PeerEnd {
    /// This node has every chunk.
    Done,
    /// Unreachable or gone mid-transfer: may be tried again later.
    Lost(String),
    /// Sent bytes that are not the chunk, or broke the protocol: never again.
    Liar(String),
    /// Refused us or failed authentication (other version, other swarm,
    /// wrong secret): never again.
    Refused(String),
    /// This node could not keep a chunk: the node fails.
    Local(String),
}

enum Req {
    Have,
    Piece(usize),
}

async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
    within: Duration,
) -> Result<Frame, String> {
    match tokio::time::timeout(within, wire::read_frame(r, limits)).await {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", within.as_secs())),
    }
}

async fn write<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), String> {
    wire::write_frame(w, f).await.map_err(|e| e.to_string())
}

/// Download from the peer at `addr` until this node is done or the peer
/// fails; every request still outstanding is released for other peers.
pub async fn download(shared: Arc<Shared>, addr: String, id: PeerId) -> PeerEnd {
    let mut queue = VecDeque::new();
    let end = download_inner(&shared, &addr, id, &mut queue).await;
    let mut s = shared.sched.lock();
    for r in queue {
        if let Req::Piece(p) = r {
            s.release(p);
        }
    }
    s.remove_peer(id);
    end
}

async fn download_inner(
    shared: &Arc<Shared>,
    addr: &str,
    id: PeerId,
    queue: &mut VecDeque<Req>,
) -> PeerEnd {
    let stream = match tokio::time::timeout(HANDSHAKE, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return PeerEnd::Lost(format!("cannot connect: {e}")),
        Err(_) => return PeerEnd::Lost("cannot connect: timed out".into()),
    };
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    let limits = shared.limits;
    let nonce: [u8; 32] = rand::random();
    let hello = Frame::Hello {
        version: wire::VERSION,
        digest: shared.digest,
        nonce,
        addr: shared.advertise.clone(),
    };
    if let Err(e) = write(&mut w, &hello).await {
        return PeerEnd::Lost(e);
    }
    let theirs = match read(&mut r, &limits, HANDSHAKE).await {
        Ok(Frame::Welcome { nonce: s, tag, .. }) => {
            let t = wire::transcript(&shared.digest, &nonce, &s, &shared.advertise);
            if !shared.key.verify(wire::WELCOME_CONTEXT, &t, &tag) {
                return PeerEnd::Refused("does not know the swarm's secret".into());
            }
            t
        }
        Ok(Frame::Error { message }) => return PeerEnd::Refused(format!("refused us: {message}")),
        Ok(_) => return PeerEnd::Refused("answered the HELLO with another frame".into()),
        Err(e) if e.contains("version") => return PeerEnd::Refused(e),
        Err(e) => return PeerEnd::Lost(e),
    };
    let auth = Frame::Auth {
        tag: shared.key.tag(wire::AUTH_CONTEXT, &theirs),
    };
    if let Err(e) = write(&mut w, &auth).await {
        return PeerEnd::Lost(e);
    }
    let window = shared.opts.window.max(1);
    let mut have_known = false;
    let mut last_have = Instant::now();
    if let Err(e) = write(&mut w, &Frame::HaveRequest).await {
        return PeerEnd::Lost(e);
    }
    queue.push_back(Req::Have);
    loop {
        if shared.sched.lock().done() {
            return PeerEnd::Done;
        }
        let outstanding: Vec<usize> = queue
            .iter()
            .filter_map(|r| match r {
                Req::Piece(p) => Some(*p),
                Req::Have => None,
            })
            .collect();
        if have_known && outstanding.len() < window {
            let picks =
                shared
                    .sched
                    .lock()
                    .pick_for_peer(id, window - outstanding.len(), &outstanding);
            for p in picks {
                let index = shared.index_of(p);
                queue.push_back(Req::Piece(p));
                if let Err(e) = write(&mut w, &Frame::Get { index }).await {
                    return PeerEnd::Lost(e);
                }
            }
        }
        let asking = queue.iter().any(|r| matches!(r, Req::Have));
        let pieces = queue.iter().any(|r| matches!(r, Req::Piece(_)));
        if !asking && (!pieces || last_have.elapsed() >= HAVE_EVERY) {
            if !pieces {
                // Nothing this peer can give yet: ask again in a while.
                tokio::time::sleep(HAVE_EVERY).await;
            }
            last_have = Instant::now();
            queue.push_back(Req::Have);
            if let Err(e) = write(&mut w, &Frame::HaveRequest).await {
                return PeerEnd::Lost(e);
            }
        }
        let frame = match read(&mut r, &limits, shared.opts.io_timeout).await {
            Ok(f) => f,
            Err(e) => return PeerEnd::Lost(e),
        };
        match (queue.pop_front(), frame) {
            (Some(Req::Have), Frame::Have { bitmap }) => {
                if bitmap.len() != shared.bitmap_len {
                    return PeerEnd::Liar(format!(
                        "sent a bitmap of {} bytes, the manifest needs {}",
                        bitmap.len(),
                        shared.bitmap_len
                    ));
                }
                shared.sched.lock().set_peer(id, &bitmap);
                have_known = true;
            }
            (Some(Req::Piece(p)), Frame::Chunk { index, data }) => {
                if index != shared.index_of(p) {
                    queue.push_front(Req::Piece(p));
                    return PeerEnd::Liar(format!("answered chunk index {index} out of order"));
                }
                match shared.keep(p, data).await {
                    Ok(Some(n)) => {
                        shared.bytes_from_peers.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(Kept::Wrong(why)) => {
                        shared.sched.lock().release(p);
                        return PeerEnd::Liar(why);
                    }
                    Err(Kept::Local(why)) => {
                        shared.sched.lock().release(p);
                        return PeerEnd::Local(why);
                    }
                }
            }
            (Some(Req::Piece(p)), Frame::Missing { .. }) => {
                let mut s = shared.sched.lock();
                s.release(p);
                s.peer_lacks(id, p);
            }
            (req, Frame::Error { message }) => {
                if let Some(r) = req {
                    queue.push_front(r);
                }
                return PeerEnd::Refused(format!("ended the connection: {message}"));
            }
            (req, _) => {
                if let Some(r) = req {
                    queue.push_front(r);
                }
                return PeerEnd::Liar("sent a frame that answers nothing asked".into());
            }
        }
    }
}

/// Why a chunk from a peer was not kept.
pub enum Kept {
    /// Not the chunk: the sender is lying (or broken).
    Wrong(String),
    /// This node failed to store it.
    Local(String),
}

impl Shared {
    /// Verify `data` against piece `p` (off the reactor) and keep it.
    /// `Some(bytes)` if it was new, `None` if another copy won meanwhile.
    pub(crate) async fn keep(self: &Arc<Self>, p: usize, data: Bytes) -> Result<Option<u64>, Kept> {
        let piece = self.sched.lock().pieces()[p].clone();
        let holdings = Arc::clone(&self.holdings);
        let checked = tokio::task::spawn_blocking(move || {
            if data.len() != piece.len as usize || ChunkId::of(&data) != piece.id {
                return Err(Kept::Wrong(format!(
                    "sent {} bytes that do not match chunk {} ({} bytes)",
                    data.len(),
                    piece.id,
                    piece.len
                )));
            }
            holdings
                .put(&piece.id, &data)
                .map_err(|e| Kept::Local(format!("keeping chunk {}: {e}", piece.id)))?;
            Ok(data.len() as u64)
        })
        .await
        .map_err(|e| Kept::Local(format!("task failed: {e}")))??;
        let new = self.sched.lock().complete(p);
        if new {
            self.done_bytes.fetch_add(checked, Ordering::Relaxed);
            if let Some(pr) = &self.opts.progress {
                pr.done.fetch_add(checked, Ordering::Relaxed);
            }
        }
        Ok(new.then_some(checked))
    }
}

/// Answer one peer that connected to us: handshake, then its requests in
/// order, until it leaves, stalls or breaks the protocol.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    // Peers never send chunks: a CHUNK frame is refused at its header.
    let limits = Limits { max_chunk: 0 };
    let (client_nonce, addr) = match read(&mut r, &limits, HANDSHAKE).await {
        Ok(Frame::Hello {
            digest,
            nonce,
            addr,
            ..
        }) => {
            if digest != shared.digest {
                let _ = write(
                    &mut w,
                    &Frame::Error {
                        message: "not a member of this swarm (another manifest)".into(),
                    },
                )
                .await;
                return Err("a peer of another swarm connected".into());
            }
            (nonce, addr)
        }
        Ok(_) => return Err("first frame was not a HELLO".into()),
        Err(e) => {
            if e.contains("version") {
                let message = format!("{e} (refused by {})", shared.advertise);
                let _ = write(&mut w, &Frame::Error { message }).await;
            }
            return Err(e);
        }
    };
    let nonce: [u8; 32] = rand::random();
    let t = wire::transcript(&shared.digest, &client_nonce, &nonce, &addr);
    let welcome = Frame::Welcome {
        version: wire::VERSION,
        nonce,
        tag: shared.key.tag(wire::WELCOME_CONTEXT, &t),
    };
    write(&mut w, &welcome).await?;
    match read(&mut r, &limits, HANDSHAKE).await? {
        Frame::Auth { tag } if shared.key.verify(wire::AUTH_CONTEXT, &t, &tag) => {}
        _ => {
            let _ = write(
                &mut w,
                &Frame::Error {
                    message: "authentication failed".into(),
                },
            )
            .await;
            return Err(format!("peer {addr} failed authentication"));
        }
    }
    // An authenticated peer is one we may fetch from too.
    shared.learn(&addr);
    loop {
        let frame = match read(&mut r, &limits, Duration::from_secs(120)).await {
            Ok(f) => f,
            Err(e) if e.contains("closed") => return Ok(()),
            Err(e) => return Err(e),
        };
        let answer = match frame {
            Frame::HaveRequest => Frame::Have {
                bitmap: Bytes::from(shared.sched.lock().bitmap()),
            },
            Frame::Get { index } => {
                let held = {
                    let s = shared.sched.lock();
                    s.piece_at(index)
                        .filter(|p| s.is_held(*p))
                        .map(|p| s.pieces()[p].id)
                };
                match held {
                    Some(id) => {
                        let h = Arc::clone(&shared.holdings);
                        match tokio::task::spawn_blocking(move || h.get(&id)).await {
                            Ok(Ok(data)) => {
                                shared
                                    .bytes_served
                                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                                Frame::Chunk { index, data }
                            }
                            _ => Frame::Missing { index },
                        }
                    }
                    None => Frame::Missing { index },
                }
            }
            _ => {
                let _ = write(
                    &mut w,
                    &Frame::Error {
                        message: "unexpected frame".into(),
                    },
                )
                .await;
                return Err(format!("peer {addr} sent an unexpected frame"));
            }
        };
        write(&mut w, &answer).await?;
    }
}
