//! Entry points for fuzzing the parsers that read what a peer, a client or
//! a disk hands strato: one function per target, taking arbitrary bytes.
//! Each must return (an error is the expected answer to garbage) without
//! panicking, hanging or allocating without bound.
//!
//! `libfuzzer/` runs them under cargo-fuzz (nightly); `tests/regressions.rs`
//! runs them on stable over every kept input in `regressions/TARGET/` and
//! over random bytes, so a crash once found stays fixed.

use std::io::Write;

use bytes::{Bytes, BytesMut};

/// A fuzz target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target by name, as cargo-fuzz and the regression test know it.
pub const TARGETS: &[(&str, Target)] = &[
    ("chunk_frames", chunk_frames),
    ("chunk_id_lines", chunk_id_lines),
    ("chunk_route", chunk_route),
    ("ticket", ticket),
    ("chain_frames", chain_frames),
    ("mcast_datagram", mcast_datagram),
    ("mcast_control", mcast_control),
    ("migrate_frame", migrate_frame),
    ("disk_frame", disk_frame),
    ("qemu_stream", qemu_stream),
    ("qcow2_header", qcow2_header),
    ("segment", segment),
    ("codec_frames", codec_frames),
    ("nbd_stream", nbd_stream),
];

/// Largest chunk a batch frame may carry (the chunk API's own bound).
const MAX_CHUNK: usize = 1 << 20;

/// Batch frames of `PUT /chunks?batch` and of batched chunk answers.
pub fn chunk_frames(data: &[u8]) {
    let _ = chunk_api::frames::parse_frames(&Bytes::copy_from_slice(data), MAX_CHUNK);
}

/// The hex id-per-line bodies of `have`, `claim` and batch GETs.
pub fn chunk_id_lines(data: &[u8]) {
    let _ = chunk_api::ids::decode(data);
}

/// A chunk API request line: the first byte picks the method, the rest is
/// the request target.
pub fn chunk_route(data: &[u8]) {
    use http::Method;
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let methods = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::HEAD,
    ];
    let method = &methods[usize::from(m) % methods.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(uri) = text.parse::<http::Uri>() else {
        return;
    };
    let _ = chunk_api::Route::parse(method, &uri);
}

/// Signed distribution tickets, in bytes and in text, and trust keys.
pub fn ticket(data: &[u8]) {
    let _ = strato_trust::SignedTicket::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strato_trust::SignedTicket::from_text(text);
        let _ = strato_trust::PublicKey::parse(text);
    }
}

/// Chain frames as a relay reads them off a peer's connection.
pub fn chain_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    // Each decoded frame consumes bytes, so this ends; the bound is a
    // second guard.
    for _ in 0..=data.len() {
        match chain_broadcast::frame::decode_frame(&mut buf, MAX_CHUNK as u32 + 4096) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

/// Multicast data datagrams.
pub fn mcast_datagram(data: &[u8]) {
    let _ = strato::distribute::mcast::wire::Header::decode(data);
}

/// Multicast control frames, both directions.
pub fn mcast_control(data: &[u8]) {
    use strato::distribute::mcast::control::{read_frame, ToReceiver, ToSender};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    rt.block_on(async {
        let mut r = data;
        for _ in 0..=data.len() {
            match read_frame::<_, ToSender>(&mut r).await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let mut r = data;
        for _ in 0..=data.len() {
            match read_frame::<_, ToReceiver>(&mut r).await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    });
}

/// A memory-migration frame: the first byte is its kind.
pub fn migrate_frame(data: &[u8]) {
    if let Some((&kind, payload)) = data.split_first() {
        let _ = strato::migrate::memory::wire::Frame::decode(kind, Bytes::copy_from_slice(payload));
    }
}

/// A disk-migration frame: the first byte is its kind.
pub fn disk_frame(data: &[u8]) {
    if let Some((&kind, payload)) = data.split_first() {
        let _ =
            strato::migrate::disk::wire::DiskFrame::decode(kind, Bytes::copy_from_slice(payload));
    }
}

/// QEMU's migration stream as the sender agent tokenizes it, whole and
/// fed in pieces (the tokenizer keeps state across pieces).
pub fn qemu_stream(data: &[u8]) {
    let _ = strato::qemu::stream::tokenize(data);
    let mut t = strato::qemu::stream::Tokenizer::new();
    let mut out = Vec::new();
    for piece in data.chunks(7) {
        t.feed(piece, &mut out);
        out.clear();
    }
    t.finish(&mut out);
}

/// The page codec's frames (redundancy-cache references, page deltas,
/// whole pages) as a memory-migration receiver decodes them, in lockstep
/// state across frames: each frame is a 2-byte little-endian length and
/// its bytes, decoded into a page that starts as this end's copy.
pub fn codec_frames(data: &[u8]) {
    use strato::migrate::codec::rcache::{CodecConfig, PageDecoder};
    let cfg = CodecConfig {
        cache_bytes: 1 << 20,
        delta_history_bytes: 1 << 20,
        zstd_level: Some(1),
        ..CodecConfig::default()
    };
    let Ok(mut plain) = PageDecoder::new(cfg.clone(), 7) else {
        return;
    };
    let Ok(mut keyed) = PageDecoder::new_keyed(cfg.clone(), 7) else {
        return;
    };
    let mut page = vec![0x5au8; cfg.page_size];
    let mut rest = data;
    let mut page_no = 0u64;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let frame = &rest[2..2 + len];
        rest = &rest[2 + len..];
        if plain.decode(frame, &mut page).is_err() {
            plain.reset(7);
        }
        if keyed.decode_keyed(page_no, frame).is_err() {
            keyed.reset(7);
        }
        page_no = page_no.wrapping_add(1) % 64;
    }
}

/// A qcow2 header as `overlay` and `put --backing` check it.
pub fn qcow2_header(data: &[u8]) {
    let Some(path) = scratch_file(data) else {
        return;
    };
    let _ = strato::image::qcow2::read_header(path.path());
}

/// A segment file as the store opens it after a crash (trailer or scan).
pub fn segment(data: &[u8]) {
    let Some(path) = scratch_file(data) else {
        return;
    };
    let _ = strato_store::segment::open_segment(path.path(), 1);
}

/// `data` in a temporary file (in memory where /dev/shm exists).
fn scratch_file(data: &[u8]) -> Option<tempfile::NamedTempFile> {
    let shm = std::path::Path::new("/dev/shm");
    let mut f = if shm.is_dir() {
        tempfile::NamedTempFile::new_in(shm).ok()?
    } else {
        tempfile::NamedTempFile::new().ok()?
    };
    f.write_all(data).ok()?;
    f.flush().ok()?;
    Some(f)
}

/// The NBD server's side of one connection: `data` is everything a client
/// sends (handshake, options, requests with their payloads), fed through
/// `serve_conn` over an in-memory pipe to a 64 KiB writable in-memory
/// export; the server's answers are read and dropped.
pub fn nbd_stream(data: &[u8]) {
    use std::sync::Arc;
    use strato::image::nbd::{serve_conn, Exports, MemDisk};
    use tokio::io::AsyncWriteExt;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let mut exports = Exports::default();
        exports.add("disk", Arc::new(MemDisk::new(64 << 10)));
        let (client, server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(serve_conn(server, exports));
        let (mut from_srv, mut to_srv) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_srv, &mut tokio::io::sink()).await;
        });
        let _ = to_srv.write_all(data).await;
        let _ = to_srv.shutdown().await;
        // The server ends at the end of the input (EOF) or earlier on a
        // protocol error; either way it must not panic or hang.
        let res = tokio::time::timeout(std::time::Duration::from_secs(5), srv).await;
        assert!(res.is_ok(), "NBD server did not finish on a closed stream");
        if let Ok(Err(e)) = res {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        drop(to_srv);
        let _ = drain.await;
    });
}
