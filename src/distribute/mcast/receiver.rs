//! `strato mcast recv`: join a session, assemble chunks from the group,
//! verify each against its BLAKE3 id, answer every round with what is still
//! missing, and finish into a file or the node's store.
//!
//! Pieces are written where they belong as they arrive (the image file for
//! `--out`, a scratch file for `--store`), so memory stays small however
//! many chunks are incomplete at once. A chunk whose pieces are all there is
//! read back and hashed on a verifier thread; a mismatch (a forged or
//! corrupted datagram) forgets its pieces, so the next NACK asks for them.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::control::{self, Progress, SessionInfo, ToReceiver, ToSender, PROTOCOL};
use super::layout::{Layout, PieceSet};
use super::report::ReceiverReport;
use super::wire::{self, Header};
use super::McastError;
use crate::distribute::pull::ensure_bucket;
use crate::store::{ChunkId, ManifestEntry, ObjectMeta, Store};

pub enum RecvSink {
    /// Write the image to this file (sparse, atomic rename at the end).
    File(PathBuf),
    /// Commit the object to this store; chunks it holds are not waited for.
    Store { store: Store, dir: PathBuf },
}

pub struct RecvOptions {
    pub sender: SocketAddr,
    /// Interface address to join the group on (default: the local address
    /// of the control connection, i.e. the interface facing the sender).
    pub interface: Option<Ipv4Addr>,
    /// The group the user expects; a session on another group is refused.
    pub group: Option<SocketAddrV4>,
    pub sink: RecvSink,
    pub connect_timeout: Duration,
    /// Longest silence on the control channel (a round can be long).
    pub idle_timeout: Duration,
    /// Accept only sessions whose ticket verifies under these keys and
    /// names `group` (which must then be given); `None` accepts any.
    pub trust: Option<strato_trust::TrustedKeys>,
}

/// What the datagram and verifier threads share with the control loop.
struct Assembly {
    have: PieceSet,
    /// Pieces still missing per chunk.
    left: Vec<u32>,
    verified: Vec<bool>,
    verified_count: u64,
    /// Chunks handed to the verifier and not yet judged.
    verifying: u64,
    /// Highest round whose end marker arrived, plus one.
    marker: u32,
    progress: Progress,
    fatal: Option<String>,
}

struct Shared {
    asm: Mutex<Assembly>,
    stop: AtomicBool,
    bytes: Arc<AtomicU64>,
}

/// Runs one receiver to completion. `bytes` counts chunk bytes received
/// (for a progress display).
pub async fn receive(
    opts: RecvOptions,
    bytes: Arc<AtomicU64>,
) -> Result<ReceiverReport, McastError> {
    let started = Instant::now();
    let (mut ctl, local) = Control::connect(&opts).await?;
    let info = ctl.handshake().await?;
    // Before anything is created: only what the repository signed.
    ctl.key = check_trust(&opts, &info, strato_trust::now_unix())?;
    ctl.session = info.session;
    let rx = Reception::new(&opts, info, local, bytes)?;
    let threads = rx.start_threads()?;
    let held_ranges = ranges_of(&rx.held);
    ctl.send(&ToSender::Join { held: held_ranges }).await?;
    let result = rx.answer_rounds(&mut ctl, opts.idle_timeout).await;
    threads.stop();
    let rounds = result?;
    rx.finish(ctl, &opts, rounds, started).await
}

/// The control connection to the sender.
struct Control {
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    /// A signed session's control key: frames after HELLO are Signed.
    key: Option<strato_trust::ControlKey>,
    session: u32,
    seq: u64,
}

impl Control {
    /// Connects to the sender (bounded); also returns our local address.
    async fn connect(opts: &RecvOptions) -> Result<(Control, SocketAddr), McastError> {
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(opts.sender))
            .await
            .map_err(|_| {
                McastError::Timeout(format!(
                    "sender {} did not accept within {:?}",
                    opts.sender, opts.connect_timeout
                ))
            })?
            .map_err(McastError::io(format!("connecting to {}", opts.sender)))?;
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .map_err(McastError::io("control socket"))?;
        let (rd, wr) = stream.into_split();
        Ok((
            Control {
                rd,
                wr,
                key: None,
                session: 0,
                seq: 0,
            },
            local,
        ))
    }

    /// HELLO, and the sender's description of the session.
    async fn handshake(&mut self) -> Result<SessionInfo, McastError> {
        self.send(&ToSender::Hello { protocol: PROTOCOL }).await?;
        let first =
            tokio::time::timeout(Duration::from_secs(30), control::read_frame(&mut self.rd))
                .await
                .map_err(|_| McastError::Timeout("no session from the sender".into()))??;
        match first {
            Some(ToReceiver::Session(info)) => Ok(*info),
            Some(ToReceiver::Evicted { reason }) => Err(McastError::Evicted(reason)),
            Some(other) => Err(McastError::Protocol(format!(
                "expected SESSION, got {other:?}"
            ))),
            None => Err(McastError::SenderGone),
        }
    }

    /// One frame to the sender (tagged in a signed session).
    async fn send(&mut self, msg: &ToSender) -> Result<(), McastError> {
        match &self.key {
            Some(key) => {
                self.seq += 1;
                let signed = control::sign_to_sender(key, self.session, self.seq, msg)?;
                control::write_frame(&mut self.wr, &signed).await?;
            }
            None => control::write_frame(&mut self.wr, msg).await?,
        }
        Ok(())
    }
}

/// One reception: the session, where its pieces go and how far they got.
struct Reception {
    info: SessionInfo,
    group: SocketAddrV4,
    /// Where to join the group.
    interface: Ipv4Addr,
    entries: Vec<ManifestEntry>,
    layout: Arc<Layout>,
    /// Chunks the sink holds already (never waited for).
    held: Vec<usize>,
    target: Arc<Target>,
    /// Removes the temporary file unless the reception finished.
    cleanup: DiscardUnlessDone,
    shared: Arc<Shared>,
}

impl Reception {
    /// Checks the session against what we expect and can receive, lays it
    /// out and prepares the target (every early return from then on
    /// removes the temporary file).
    fn new(
        opts: &RecvOptions,
        info: SessionInfo,
        local: SocketAddr,
        bytes: Arc<AtomicU64>,
    ) -> Result<Reception, McastError> {
        let group = check_session(&info)?;
        if let Some(want) = opts.group.filter(|g| *g != group) {
            return Err(McastError::Protocol(format!(
                "the sender multicasts to {group}, not to {want}"
            )));
        }
        let entries: Vec<ManifestEntry> = info
            .entries
            .iter()
            .map(|(id, len)| ManifestEntry {
                id: ChunkId(*id),
                len: *len,
            })
            .collect();
        let layout = Arc::new(Layout::new(&entries, info.payload)?);
        let interface = match (opts.interface, local.ip()) {
            (Some(i), _) => i,
            (None, std::net::IpAddr::V4(a)) => a,
            (None, _) => Ipv4Addr::UNSPECIFIED,
        };
        let (target, held) = prepare(&opts.sink, &layout, info.session)?;
        let target = Arc::new(target);
        let cleanup = DiscardUnlessDone(Some(Arc::clone(&target)));
        let shared = Arc::new(Shared {
            asm: Mutex::new(Assembly::new(&layout, &held)),
            stop: AtomicBool::new(false),
            bytes,
        });
        Ok(Reception {
            info,
            group,
            interface,
            entries,
            layout,
            held,
            target,
            cleanup,
            shared,
        })
    }

    /// Joins the group and starts the datagram and verifier threads. On
    /// the group before JOIN: the first round starts once we joined.
    fn start_threads(&self) -> Result<Threads, McastError> {
        let (group, interface) = (self.group, self.interface);
        let sock = super::socket::receiver(group, interface)
            .map_err(McastError::io(format!("joining {group} on {interface}")))?;
        let (vtx, vrx) = std_mpsc::channel::<usize>();
        Threads::start(
            sock,
            vtx,
            vrx,
            Arc::clone(&self.shared),
            Arc::clone(&self.layout),
            Arc::clone(&self.target),
            self.info.session,
        )
    }

    /// Answers every round's end with a NACK of what is still missing,
    /// until every chunk is verified. Returns the number of rounds.
    async fn answer_rounds(&self, ctl: &mut Control, idle: Duration) -> Result<u32, McastError> {
        loop {
            let msg = tokio::time::timeout(idle, control::read_frame(&mut ctl.rd))
                .await
                .map_err(|_| {
                    McastError::Timeout(format!("no word from the sender for {idle:?}"))
                })??;
            match msg {
                Some(ToReceiver::RoundEnd { round }) => {
                    let rounds = round + 1;
                    settle(&self.shared, round).await?;
                    let (complete, missing, progress) = {
                        let a = self.shared.asm.lock();
                        let complete = a.verified_count as usize == self.layout.chunks.len();
                        (complete, a.have.complement().ranges(), a.progress.clone())
                    };
                    if complete {
                        return Ok(rounds);
                    }
                    let nack = ToSender::Nack {
                        round,
                        missing,
                        progress,
                    };
                    if let Err(e) = ctl.send(&nack).await {
                        return Err(eviction_notice(&mut ctl.rd).await.unwrap_or(e));
                    }
                }
                Some(ToReceiver::Evicted { reason }) => return Err(McastError::Evicted(reason)),
                Some(other) => {
                    return Err(McastError::Protocol(format!("unexpected {other:?}")));
                }
                None => return Err(McastError::SenderGone),
            }
        }
    }

    /// Every chunk is verified: makes the result durable and visible,
    /// tells the sender DONE and reports.
    async fn finish(
        mut self,
        mut ctl: Control,
        opts: &RecvOptions,
        rounds: u32,
        started: Instant,
    ) -> Result<ReceiverReport, McastError> {
        {
            let (target, layout, info) = (
                Arc::clone(&self.target),
                Arc::clone(&self.layout),
                self.info.clone(),
            );
            let entries = std::mem::take(&mut self.entries);
            tokio::task::spawn_blocking(move || target.finish(&layout, &info, &entries))
                .await
                .map_err(|e| McastError::Task(e.to_string()))??;
        }
        self.cleanup.0 = None;
        let progress = self.shared.asm.lock().progress.clone();
        ctl.send(&ToSender::Done {
            progress: progress.clone(),
        })
        .await?;
        let (out, store) = match &opts.sink {
            RecvSink::File(p) => (Some(p.clone()), None),
            RecvSink::Store { dir, .. } => (None, Some(dir.clone())),
        };
        let info = &self.info;
        Ok(ReceiverReport {
            sender: opts.sender.to_string(),
            group: info.group.clone(),
            session: format!("{:08x}", info.session),
            bucket: info.bucket.clone(),
            key: info.key.clone(),
            size: info.size,
            out,
            store,
            chunks: self.layout.chunks.len(),
            held_chunks: self.held.len() as u64,
            rounds,
            progress,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }
}

impl Assembly {
    /// Nothing received yet; the chunks in `held` count as verified.
    fn new(layout: &Layout, held: &[usize]) -> Assembly {
        let mut asm = Assembly {
            have: PieceSet::empty(layout.total_pieces),
            left: (0..layout.chunks.len())
                .map(|c| layout.pieces_of(c))
                .collect(),
            verified: vec![false; layout.chunks.len()],
            verified_count: 0,
            verifying: 0,
            marker: 0,
            progress: Progress::default(),
            fatal: None,
        };
        for &c in held {
            asm.have.insert_range(layout.piece_range(c));
            asm.left[c] = 0;
            asm.verified[c] = true;
            asm.verified_count += 1;
        }
        asm.progress.pieces_have = asm.have.count();
        asm.progress.chunks_verified = asm.verified_count;
        asm
    }
}

/// Removes the temporary file of an unfinished reception when dropped.
struct DiscardUnlessDone(Option<Arc<Target>>);

impl Drop for DiscardUnlessDone {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.discard();
        }
    }
}

/// After a failed write: the sender may have evicted us and closed the
/// connection while we were busy (e.g. stopped); its reason may still be
/// waiting in the socket buffer, and is a better error than a broken pipe.
async fn eviction_notice(rd: &mut tokio::net::tcp::OwnedReadHalf) -> Option<McastError> {
    for _ in 0..1000 {
        let next = tokio::time::timeout(Duration::from_secs(1), control::read_frame(rd)).await;
        match next {
            Ok(Ok(Some(ToReceiver::Evicted { reason }))) => {
                return Some(McastError::Evicted(reason))
            }
            Ok(Ok(Some(_))) => continue,
            _ => return None,
        }
    }
    None
}

/// A receiver with trust keys accepts only a session whose ticket verifies,
/// is unexpired, names the group it was told to join, and covers exactly
/// this object and these manifest entries, with a control secret the
/// ticket commits to. Returns the control key to tag our frames with (also
/// for an open receiver, when the sender signs).
fn check_trust(
    opts: &RecvOptions,
    info: &SessionInfo,
    now: u64,
) -> Result<Option<strato_trust::ControlKey>, McastError> {
    let refused = |why: String| McastError::Refused(why);
    let Some(trust) = &opts.trust else {
        return Ok(info
            .control_secret
            .as_ref()
            .map(strato_trust::ControlKey::from_secret));
    };
    let Some(group) = opts.group else {
        return Err(refused(
            "a receiver with trust keys needs its --group".into(),
        ));
    };
    let (Some(text), Some(secret)) = (&info.ticket, &info.control_secret) else {
        return Err(refused(
            "unsigned session: this receiver accepts only sessions with a ticket signed by the repository"
                .into(),
        ));
    };
    let st = strato_trust::SignedTicket::from_text(text).map_err(|e| refused(e.to_string()))?;
    let t = st
        .verify(trust, now, &group.to_string())
        .map_err(|e| refused(e.to_string()))?;
    if info.group != group.to_string() {
        return Err(refused(format!(
            "session on group {}, the ticket is for {group}",
            info.group
        )));
    }
    if t.bucket != info.bucket || t.key != info.key || t.size != info.size {
        return Err(refused(format!(
            "session for {}/{} ({} bytes), the ticket is for {}/{} ({} bytes)",
            info.bucket, info.key, info.size, t.bucket, t.key, t.size
        )));
    }
    let digest =
        strato_trust::manifest_digest(info.entries.iter().map(|(id, len)| (*id, u64::from(*len))));
    st.check_manifest(&digest)
        .map_err(|e| refused(e.to_string()))?;
    let key = strato_trust::ControlKey::from_secret(secret);
    key.check(&t.control_commitment)
        .map_err(|e| refused(e.to_string()))?;
    Ok(Some(key))
}

/// The session must describe something we can receive safely.
fn check_session(info: &SessionInfo) -> Result<SocketAddrV4, McastError> {
    if info.protocol != PROTOCOL {
        return Err(McastError::Protocol(format!(
            "sender speaks protocol {}, we speak {PROTOCOL}",
            info.protocol
        )));
    }
    if info.payload == 0 || info.payload as usize > 65507 - wire::HEADER {
        return Err(McastError::Protocol(format!(
            "datagram payload {} out of range",
            info.payload
        )));
    }
    let group: SocketAddrV4 = info
        .group
        .parse()
        .map_err(|_| McastError::Protocol(format!("bad group {:?}", info.group)))?;
    if !group.ip().is_multicast() {
        return Err(McastError::Protocol(format!(
            "{group} is not a multicast group"
        )));
    }
    let total: u64 = info.entries.iter().map(|e| e.1 as u64).sum();
    if total != info.size {
        return Err(McastError::Protocol(format!(
            "manifest covers {total} bytes, object is {}",
            info.size
        )));
    }
    Ok(group)
}

fn ranges_of(sorted: &[usize]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &c in sorted {
        let c = c as u32;
        match out.last_mut() {
            Some((s, n)) if *s + *n == c => *n += 1,
            _ => out.push((c, 1)),
        }
    }
    out
}

/// Waits (bounded) until this round's datagrams are consumed — its end
/// marker arrived, or the group has been quiet — and the verifier is idle.
async fn settle(shared: &Shared, round: u32) -> Result<(), McastError> {
    let t0 = Instant::now();
    loop {
        let (marker, verifying, fatal, received) = {
            let a = shared.asm.lock();
            (a.marker, a.verifying, a.fatal.clone(), a.progress.datagrams)
        };
        if let Some(f) = fatal {
            return Err(McastError::Io {
                what: "receiving".into(),
                source: std::io::Error::other(f),
            });
        }
        let waited = t0.elapsed();
        // A lost marker: 300 ms is far longer than any socket backlog.
        let drained = marker > round || waited > Duration::from_millis(300);
        if drained && verifying == 0 {
            return Ok(());
        }
        if waited > Duration::from_secs(60) {
            return Err(McastError::Timeout(format!(
                "chunks still being verified after 60 s ({received} datagrams)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where pieces are assembled.
struct Target {
    file: File,
    /// The temporary name (renamed to `out` at the end, or removed).
    tmp: PathBuf,
    kind: TargetKind,
}

enum TargetKind {
    /// Pieces at their image offset; the file becomes the image.
    Image { out: PathBuf },
    /// Pieces at their packed offset; verified chunks go into the store.
    Scratch { store: Store },
}

fn prepare(
    sink: &RecvSink,
    layout: &Layout,
    session: u32,
) -> Result<(Target, Vec<usize>), McastError> {
    match sink {
        RecvSink::File(out) => {
            let tmp = tmp_path(out);
            let file = create(&tmp, layout.image_size)?;
            Ok((
                Target {
                    file,
                    tmp,
                    kind: TargetKind::Image { out: out.clone() },
                },
                Vec::new(),
            ))
        }
        RecvSink::Store { store, dir } => {
            let held: Vec<usize> = (0..layout.chunks.len())
                .filter(|&c| store.has_chunk(&layout.chunks[c].id))
                .collect();
            let tmp = dir.join(format!(".mcast-{session:08x}.part"));
            let file = create(&tmp, layout.packed_size)?;
            Ok((
                Target {
                    file,
                    tmp,
                    kind: TargetKind::Scratch {
                        store: store.clone(),
                    },
                },
                held,
            ))
        }
    }
}

fn create(path: &Path, len: u64) -> Result<File, McastError> {
    let what = format!("creating {}", path.display());
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(McastError::io(what.clone()))?;
    // Sparse: zero runs are never written and stay holes.
    f.set_len(len).map_err(McastError::io(what))?;
    Ok(f)
}

fn tmp_path(out: &Path) -> PathBuf {
    crate::distribute::partial_path(out, "mcast")
}

impl Target {
    fn base(&self, layout: &Layout, c: usize) -> u64 {
        match self.kind {
            TargetKind::Image { .. } => layout.chunks[c].image_offsets[0],
            TargetKind::Scratch { .. } => layout.chunks[c].packed_offset,
        }
    }

    /// A complete chunk: hash it; if good, put its other copies in place
    /// (image) or hand it to the store. Ok(false) for a mismatch.
    fn verify(&self, layout: &Layout, c: usize) -> Result<bool, McastError> {
        let spec = &layout.chunks[c];
        let mut data = vec![0u8; spec.len as usize];
        self.file
            .read_exact_at(&mut data, self.base(layout, c))
            .map_err(McastError::io(format!(
                "reading back {}",
                self.tmp.display()
            )))?;
        if ChunkId::of(&data) != spec.id {
            return Ok(false);
        }
        match &self.kind {
            // Further copies of an all-zero chunk (FastCDC stores zero
            // regions as chunks) stay holes of the sparse file.
            TargetKind::Image { .. } if crate::store::chunker::is_zero(&data) => {}
            TargetKind::Image { .. } => {
                for off in &spec.image_offsets[1..] {
                    self.file
                        .write_all_at(&data, *off)
                        .map_err(McastError::io(format!("writing {}", self.tmp.display())))?;
                }
            }
            TargetKind::Scratch { store } => {
                store.put_chunk_unsynced(&spec.id, &data)?;
            }
        }
        Ok(true)
    }

    /// Every chunk is verified: make the result durable and visible.
    fn finish(
        &self,
        _layout: &Layout,
        info: &SessionInfo,
        entries: &[ManifestEntry],
    ) -> Result<(), McastError> {
        match &self.kind {
            TargetKind::Image { out } => {
                self.file
                    .sync_all()
                    .map_err(McastError::io(format!("syncing {}", self.tmp.display())))?;
                std::fs::rename(&self.tmp, out)
                    .map_err(McastError::io(format!("renaming to {}", out.display())))?;
                if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                    // The rename is durable only once the directory is.
                    if let Ok(d) = File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
            }
            TargetKind::Scratch { store } => {
                ensure_bucket(store, &info.bucket)?;
                let meta = ObjectMeta {
                    size: info.size,
                    etag: info.etag.clone(),
                    profile: info.profile.clone(),
                    parts: info.parts,
                };
                // Syncs every referenced chunk (they went in unsynced).
                store.commit_object(&info.bucket, &info.key, meta, entries)?;
                let _ = std::fs::remove_file(&self.tmp);
            }
        }
        Ok(())
    }

    fn discard(&self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The datagram and verifier threads; told to stop when dropped (an early
/// return), stopped and joined by [`Threads::stop`].
struct Threads {
    handles: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

impl Threads {
    fn start(
        sock: UdpSocket,
        vtx: std_mpsc::Sender<usize>,
        vrx: std_mpsc::Receiver<usize>,
        shared: Arc<Shared>,
        layout: Arc<Layout>,
        target: Arc<Target>,
        session: u32,
    ) -> Result<Threads, McastError> {
        let spawn_err = McastError::io("starting receiver threads");
        let rx_thread = {
            let (shared, layout, target) = (
                Arc::clone(&shared),
                Arc::clone(&layout),
                Arc::clone(&target),
            );
            std::thread::Builder::new()
                .name("mcast-recv".into())
                .spawn(move || datagram_loop(sock, vtx, &shared, &layout, &target, session))
        };
        let rx_thread = rx_thread.map_err(spawn_err)?;
        let verifier = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("mcast-verify".into())
                .spawn(move || verify_loop(vrx, &shared, &layout, &target))
        };
        let verifier = match verifier {
            Ok(v) => v,
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Err(McastError::io("starting the verifier")(e));
            }
        };
        Ok(Threads {
            handles: vec![rx_thread, verifier],
            shared,
        })
    }

    fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.join();
        }
    }
}

fn datagram_loop(
    sock: UdpSocket,
    vtx: std_mpsc::Sender<usize>,
    shared: &Shared,
    layout: &Layout,
    target: &Target,
    session: u32,
) {
    let mut buf = vec![0u8; 65536];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                shared.asm.lock().fatal = Some(format!("multicast socket: {e}"));
                return;
            }
        };
        let mut a = shared.asm.lock();
        a.progress.datagrams += 1;
        let Some((h, payload)) = Header::decode(&buf[..n]).filter(|(h, _)| h.session == session)
        else {
            a.progress.foreign += 1;
            continue;
        };
        if h.kind == wire::ROUND_END {
            a.marker = a.marker.max(h.index.saturating_add(1));
            continue;
        }
        let c = h.index as usize;
        // Bounds from the layout, never from the datagram.
        let fits = c < layout.chunks.len()
            && h.offset % layout.payload == 0
            && h.offset < layout.chunks[c].len
            && payload.len() as u32 == (layout.chunks[c].len - h.offset).min(layout.payload);
        if !fits {
            a.progress.foreign += 1;
            continue;
        }
        let piece = layout.chunks[c].first_piece + h.offset / layout.payload;
        if a.have.contains(piece) {
            a.progress.duplicates += 1;
            continue;
        }
        let at = target.base(layout, c) + h.offset as u64;
        if let Err(e) = target.file.write_all_at(payload, at) {
            a.fatal = Some(format!("writing {}: {e}", target.tmp.display()));
            return;
        }
        a.have.insert(piece);
        a.progress.pieces_have += 1;
        shared
            .bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        a.left[c] -= 1;
        if a.left[c] == 0 {
            a.verifying += 1;
            if vtx.send(c).is_err() {
                return;
            }
        }
    }
}

fn verify_loop(vrx: std_mpsc::Receiver<usize>, shared: &Shared, layout: &Layout, target: &Target) {
    loop {
        let c = match vrx.recv_timeout(Duration::from_millis(100)) {
            Ok(c) => c,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let r = target.verify(layout, c);
        let mut a = shared.asm.lock();
        a.verifying -= 1;
        match r {
            Ok(true) => {
                a.verified[c] = true;
                a.verified_count += 1;
                a.progress.chunks_verified += 1;
                a.progress.bytes_written += layout.chunks[c].len as u64;
            }
            Ok(false) => {
                tracing::warn!(
                    chunk = c,
                    "assembled chunk does not match its id; asking again"
                );
                let r = layout.piece_range(c);
                a.progress.pieces_have -= r.len() as u64;
                a.have.remove_range(r);
                a.left[c] = layout.pieces_of(c);
                a.progress.verify_failures += 1;
            }
            Err(e) => {
                a.fatal = Some(e.to_string());
                return;
            }
        }
    }
}
