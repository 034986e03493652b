//! Signed sessions between in-process nodes on loopback: what a node with
//! trust keys accepts and what it refuses before writing anything.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chain_broadcast::{
    chain_manifest_digest, propagate, ChunkSource, Frame, FrameReader, FrameWriter, Manifest,
    MemStore, Node, NodeTrust, Options, Report, ServeOptions, SessionAuth,
};
use strato_trust::{now_unix, Audience, ControlKey, Keyring, Ticket, TrustedKeys};

const NAME: &str = "images/disk.img";

struct Repo {
    _dir: tempfile::TempDir,
    ring: Keyring,
}

fn repo() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let (ring, _) = Keyring::open_or_create(dir.path()).unwrap();
    Repo { _dir: dir, ring }
}

impl Repo {
    fn trust(&self) -> Arc<NodeTrust> {
        Arc::new(NodeTrust {
            keys: TrustedKeys::new(vec![self.ring.public()]).unwrap(),
            names: vec![],
        })
    }

    /// A session for `nodes` over `manifest`, valid from `issued` to `expires`.
    fn session(
        &self,
        manifest: &Manifest,
        nodes: &[SocketAddr],
        issued: u64,
        expires: u64,
    ) -> SessionAuth {
        let (secret, key) = ControlKey::generate();
        let t = Ticket {
            session: [1; 16],
            issued_at: issued,
            expires_at: expires,
            bucket: "images".into(),
            key: "disk.img".into(),
            size: manifest.size(),
            manifest_digest: chain_manifest_digest(manifest),
            control_commitment: key.commitment(),
            audience: Audience::Nodes(nodes.iter().map(ToString::to_string).collect()),
        };
        SessionAuth::new(t.sign(&self.ring), secret).unwrap()
    }
}

fn image(seed: u8) -> (Arc<MemStore>, Arc<Manifest>) {
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    let (manifest, parts) = Manifest::from_fixed_chunks(&Bytes::from(data), 64 << 10);
    let src = MemStore::new();
    for (c, p) in manifest.chunks.iter().zip(parts) {
        src.insert(c.id, p);
    }
    (src, Arc::new(manifest))
}

async fn trusting_node(store: &Arc<MemStore>, trust: Arc<NodeTrust>) -> Node {
    let opts = ServeOptions {
        trust: Some(trust),
        ..ServeOptions::default()
    };
    Node::spawn("127.0.0.1:0".parse().unwrap(), store.factory(), opts)
        .await
        .unwrap()
}

async fn send(
    src: &Arc<MemStore>,
    manifest: &Arc<Manifest>,
    nodes: &[SocketAddr],
    session: Option<SessionAuth>,
) -> Report {
    let opts = Options {
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(5),
        finish_timeout: Duration::from_secs(20),
        session,
        ..Options::default()
    };
    let source: Arc<dyn ChunkSource> = src.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        propagate(source, NAME, Arc::clone(manifest), nodes, &opts),
    )
    .await
    .expect("propagation hung")
    .expect("propagation ran")
}

fn reason(r: &Report, i: usize) -> String {
    r.nodes[i].reason.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_signed_session_reaches_every_node() {
    let repo = repo();
    let (src, manifest) = image(3);
    let (a, b) = (MemStore::new(), MemStore::new());
    let na = trusting_node(&a, repo.trust()).await;
    let nb = trusting_node(&b, repo.trust()).await;
    let nodes = [na.addr(), nb.addr()];
    let now = now_unix();
    let s = repo.session(&manifest, &nodes, now, now + 600);
    let r = send(&src, &manifest, &nodes, Some(s)).await;
    assert!(r.all_ok(), "{r:?}");
    assert_eq!(r.forged_control_frames, 0);
    assert_eq!(a.object(NAME).map(|o| o.len()), Some(1 << 20));
    assert_eq!(b.object(NAME), a.object(NAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_misaddressed_and_mismatched_sessions_write_nothing() {
    let repo = repo();
    let stranger = self::repo();
    let (src, manifest) = image(5);
    let a = MemStore::new();
    let na = trusting_node(&a, repo.trust()).await;
    let nodes = [na.addr()];
    let now = now_unix();

    // No ticket at all.
    let r = send(&src, &manifest, &nodes, None).await;
    assert!(!r.all_ok());
    assert!(
        reason(&r, 0).contains("unsigned session"),
        "{}",
        reason(&r, 0)
    );

    // Valid frames and a well-formed ticket, but another key signed it.
    let forged = stranger.session(&manifest, &nodes, now, now + 600);
    let r = send(&src, &manifest, &nodes, Some(forged)).await;
    assert!(
        reason(&r, 0).contains("does not trust"),
        "{}",
        reason(&r, 0)
    );

    // Expired (beyond any clock skew).
    let old = repo.session(&manifest, &nodes, now - 7200, now - 3600);
    let r = send(&src, &manifest, &nodes, Some(old)).await;
    assert!(reason(&r, 0).contains("expired"), "{}", reason(&r, 0));

    // For another node.
    let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let elsewhere = repo.session(&manifest, &[other], now, now + 600);
    let r = send(&src, &manifest, &nodes, Some(elsewhere)).await;
    assert!(reason(&r, 0).contains("not for"), "{}", reason(&r, 0));

    // Signed for one image, used to push another.
    let (src2, manifest2) = image(7);
    let signed_for_first = repo.session(&manifest, &nodes, now, now + 600);
    let r = send(&src2, &manifest2, &nodes, Some(signed_for_first)).await;
    assert!(
        reason(&r, 0).contains("manifest does not match"),
        "{}",
        reason(&r, 0)
    );

    assert_eq!(a.object(NAME), None);
    assert_eq!(a.bytes_put(), 0, "a refused session stored chunks");

    // The honest session still works on the same node afterwards.
    let honest = repo.session(&manifest, &nodes, now, now + 600);
    let r = send(&src, &manifest, &nodes, Some(honest)).await;
    assert!(r.all_ok(), "{r:?}");
}

/// A downstream that answers a signed HELLO with a HAVE under a made-up tag.
async fn rogue_node() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((sock, _)) = l.accept().await else {
            return;
        };
        let (r, w) = sock.into_split();
        let mut r = FrameReader::new(r, 64 << 20);
        let mut w = FrameWriter::new(w, Duration::from_secs(5));
        if let Ok(Some(Frame::Hello(h))) = r.read_frame().await {
            let have = vec![true; h.manifest.len()];
            let _ = w.send_now(&Frame::Have(have)).await;
            let _ = w.send_now(&Frame::Tag([0x42; 32])).await;
        }
        r.discard_until_eof().await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_have_is_counted_and_its_node_bypassed() {
    let repo = repo();
    let (src, manifest) = image(9);
    let rogue = rogue_node().await;
    let b = MemStore::new();
    let nb = trusting_node(&b, repo.trust()).await;
    let nodes = [rogue, nb.addr()];
    let now = now_unix();
    let s = repo.session(&manifest, &nodes, now, now + 600);
    let r = send(&src, &manifest, &nodes, Some(s)).await;
    assert_eq!(r.forged_control_frames, 1);
    assert!(!r.nodes[0].ok);
    assert!(reason(&r, 0).contains("forged HAVE"), "{}", reason(&r, 0));
    // Its claim to hold everything did not stop the next node's delivery.
    assert!(r.nodes[1].ok, "{r:?}");
    assert_eq!(b.object(NAME).map(|o| o.len()), Some(1 << 20));
}
