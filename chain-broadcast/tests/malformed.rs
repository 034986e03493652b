//! Peers that send garbage or wrong bytes get a clear error, and nothing
//! they sent is reported complete.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chain_broadcast::frame::{encode, DEFAULT_MAX_FRAME};
use chain_broadcast::{
    propagate, ChunkId, ChunkSource, Frame, FrameReader, Hello, Manifest, MemStore, Node, Options,
    ServeOptions, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn node(store: &Arc<MemStore>) -> Node {
    Node::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        store.factory(),
        ServeOptions {
            hello_timeout: Duration::from_secs(2),
            ..ServeOptions::default()
        },
    )
    .await
    .expect("bind")
}

/// Sends raw bytes and returns the ERROR frame the node answers with.
async fn error_for(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut r = FrameReader::new(s, DEFAULT_MAX_FRAME);
    match tokio::time::timeout(Duration::from_secs(5), r.read_frame()).await {
        Ok(Ok(Some(Frame::Error(e)))) => e,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

fn hello(addrs: Vec<SocketAddr>, manifest: Manifest) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        transfer_id: 7,
        name: "disk.img".into(),
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(3),
        finish_timeout: Duration::from_secs(10),
        chain: addrs,
        manifest: Arc::new(manifest),
        session: None,
    }
}

#[tokio::test]
async fn garbage_is_refused_with_a_clear_error() {
    let store = MemStore::new();
    let n = node(&store).await;
    let e = error_for(n.addr(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(e.contains("bad frame magic"), "{e}");

    let e = error_for(n.addr(), b"SC\x09\0\0\0\0").await;
    assert!(e.contains("unknown frame kind"), "{e}");

    let e = error_for(n.addr(), b"SC\x01\xff\xff\xff\xff").await;
    assert!(e.contains("exceeds"), "{e}");

    let mut h = hello(vec![n.addr()], Manifest::default());
    h.version = PROTOCOL_VERSION + 1;
    let e = error_for(n.addr(), &encode(&Frame::Hello(h))).await;
    assert!(e.contains("unsupported protocol version"), "{e}");

    // A frame cut short by the peer closing.
    let whole = encode(&Frame::Hello(hello(vec![n.addr()], Manifest::default())));
    let mut s = TcpStream::connect(n.addr()).await.expect("connect");
    s.write_all(&whole[..whole.len() - 3]).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut r = FrameReader::new(s, DEFAULT_MAX_FRAME);
    match tokio::time::timeout(Duration::from_secs(5), r.read_frame()).await {
        Ok(Ok(Some(Frame::Error(e)))) => assert!(e.contains("middle of a frame"), "{e}"),
        other => panic!("expected ERROR, got {other:?}"),
    }

    // DATA before HELLO.
    let e = error_for(n.addr(), &encode(&Frame::End)).await;
    assert!(e.contains("expected HELLO"), "{e}");

    // Silence: the node gives up instead of waiting forever.
    let s = TcpStream::connect(n.addr()).await.expect("connect");
    let mut r = FrameReader::new(s, DEFAULT_MAX_FRAME);
    match tokio::time::timeout(Duration::from_secs(5), r.read_frame()).await {
        Ok(Ok(Some(Frame::Error(e)))) => assert!(e.contains("timed out"), "{e}"),
        other => panic!("expected ERROR, got {other:?}"),
    }

    // The node still works afterwards.
    let data = Bytes::from(vec![5u8; 300_000]);
    let (manifest, parts) = Manifest::from_fixed_chunks(&data, 65536);
    let src = MemStore::new();
    for (c, p) in manifest.chunks.iter().zip(parts) {
        src.insert(c.id, p);
    }
    let source: Arc<dyn ChunkSource> = src;
    let report = propagate(
        source,
        "ok.img",
        Arc::new(manifest),
        &[n.addr()],
        &Options::default(),
    )
    .await
    .expect("ran");
    assert!(report.all_ok(), "{report:#?}");
    assert_eq!(store.object("ok.img").as_deref(), Some(&data[..]));
}

/// Plays the upstream by hand: HELLO, read HAVE, then send `data` under `id`.
async fn send_chunk_as(
    addrs: Vec<SocketAddr>,
    manifest: Manifest,
    id: ChunkId,
    data: Bytes,
) -> String {
    let mut s = TcpStream::connect(addrs[0]).await.expect("connect");
    s.write_all(&encode(&Frame::Hello(hello(addrs, manifest))))
        .await
        .expect("hello");
    let (rd, mut wr) = s.into_split();
    let mut r = FrameReader::new(rd, DEFAULT_MAX_FRAME);
    match tokio::time::timeout(Duration::from_secs(5), r.read_frame()).await {
        Ok(Ok(Some(Frame::Have(_)))) => {}
        other => panic!("expected HAVE, got {other:?}"),
    }
    wr.write_all(&encode(&Frame::Data { id, data }))
        .await
        .expect("data");
    wr.write_all(&encode(&Frame::End)).await.expect("end");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), r.read_frame()).await {
            Ok(Ok(Some(Frame::Error(e)))) => return e,
            Ok(Ok(Some(Frame::Keepalive))) => continue,
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn wrong_chunk_bytes_are_rejected() {
    let (a, b) = (MemStore::new(), MemStore::new());
    let (na, nb) = (node(&a).await, node(&b).await);
    let good = Bytes::from_static(b"the real chunk");
    let manifest = Manifest::from_fixed_chunks(&good, 1 << 20).0;
    let id = manifest.chunks[0].id;

    // Same length, wrong content.
    let e = send_chunk_as(
        vec![na.addr(), nb.addr()],
        manifest.clone(),
        id,
        Bytes::from_static(b"the fake chunk"),
    )
    .await;
    assert!(
        e.contains("failed verification") && e.contains("hash"),
        "{e}"
    );
    // Neither the node nor the one after it completed from bad data.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.object("disk.img").is_none());
    assert!(b.object("disk.img").is_none());
    assert!(!a.contains(&id) && !b.contains(&id));

    // Wrong length.
    let e = send_chunk_as(
        vec![na.addr()],
        manifest.clone(),
        id,
        Bytes::from_static(b"short"),
    )
    .await;
    assert!(e.contains("manifest says"), "{e}");

    // An id that is not in the manifest.
    let other = Bytes::from_static(b"some other chunk");
    let e = send_chunk_as(vec![na.addr()], manifest, ChunkId::of(&other), other).await;
    assert!(e.contains("not in the manifest"), "{e}");
    assert!(a.object("disk.img").is_none());
}

#[tokio::test]
async fn end_before_all_chunks_is_not_complete() {
    let a = MemStore::new();
    let na = node(&a).await;
    let data = Bytes::from(vec![1u8; 200_000]);
    let (manifest, parts) = Manifest::from_fixed_chunks(&data, 65536);
    let mut s = TcpStream::connect(na.addr()).await.expect("connect");
    s.write_all(&encode(&Frame::Hello(hello(
        vec![na.addr()],
        manifest.clone(),
    ))))
    .await
    .expect("hello");
    let (rd, mut wr) = s.into_split();
    let mut r = FrameReader::new(rd, DEFAULT_MAX_FRAME);
    assert!(matches!(r.read_frame().await, Ok(Some(Frame::Have(_)))));
    // Entries 0..3 share one id; the short last chunk is never sent.
    wr.write_all(&encode(&Frame::Data {
        id: manifest.chunks[0].id,
        data: parts[0].clone(),
    }))
    .await
    .expect("data");
    wr.write_all(&encode(&Frame::End)).await.expect("end");
    let report = loop {
        match tokio::time::timeout(Duration::from_secs(5), r.read_frame()).await {
            Ok(Ok(Some(Frame::Report(v)))) => break v,
            Ok(Ok(Some(Frame::Keepalive))) => continue,
            other => panic!("expected REPORT, got {other:?}"),
        }
    };
    assert!(!report[0].ok);
    assert!(
        report[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("missing"),
        "{report:?}"
    );
    assert!(a.object("disk.img").is_none());
}

#[tokio::test]
async fn a_busy_node_refuses_clearly() {
    let store = MemStore::new();
    let n = Node::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        store.factory(),
        ServeOptions {
            max_sessions: 1,
            hello_timeout: Duration::from_secs(3),
            ..ServeOptions::default()
        },
    )
    .await
    .expect("bind");
    // One connection that says nothing occupies the only slot.
    let _idle = TcpStream::connect(n.addr()).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = error_for(
        n.addr(),
        &encode(&Frame::Hello(hello(vec![n.addr()], Manifest::default()))),
    )
    .await;
    assert!(e.contains("busy"), "{e}");
}
