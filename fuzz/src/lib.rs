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
    ("swarm_wire", swarm_wire),
    ("s3_request", s3_request),
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

/// The S3 request path: `data` is a sequence of requests (separated by a
/// line holding only `---`) served by the s3-compat adapter over a real
/// store in a fresh scratch directory, with one bucket `fuzz` holding one
/// object `obj`. Each request is
///
/// ```text
/// FLAGS TARGET\n        FLAGS: one byte; bits 0-2 the method, bit 3 "send unsigned",
///                      bit 4 "sign the body's hash" (else UNSIGNED-PAYLOAD)
/// Name: value\n ...     headers, signed with the rest
/// \n
/// body
/// ```
///
/// Signed requests get past SigV4 so the handlers see the garbage; unsigned
/// ones exercise the signature checks. Every answer must be a well-formed
/// response whose body can be read: an error document for bad input, never
/// a 500, never a panic or a hang.
pub fn s3_request(data: &[u8]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(dir) = scratch_dir() else {
        return;
    };
    rt.block_on(async {
        // The fixture is made of valid requests: failing to make it is a bug.
        let svc = s3_fixture(dir.path())
            .await
            .unwrap_or_else(|| panic!("the S3 fuzz fixture could not be made"));
        for (i, one) in split_requests(data).into_iter().enumerate() {
            if i >= 8 {
                break;
            }
            let Some(req) = s3_parse_request(one) else {
                continue;
            };
            s3_serve_checked(&svc, req).await;
        }
    });
}

const S3_FUZZ_KEY: (&str, &str) = ("AKIDFUZZ", "fuzz-secret-key");

/// A scratch directory, in memory where /dev/shm exists.
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
}

/// The service over a fresh store, with the bucket and object every input
/// can reach already made through the service itself.
async fn s3_fixture(dir: &std::path::Path) -> Option<s3_compat::S3Service> {
    use std::sync::Arc;
    let store = strato_store::Store::open(dir, strato_store::StoreConfig::default()).ok()?;
    let creds =
        s3_compat::StaticCredentials::new().with_user("fuzzer", S3_FUZZ_KEY.0, S3_FUZZ_KEY.1);
    let svc = s3_compat::S3Service::builder(
        Arc::new(strato::server::StoreBackend::new(store)),
        Arc::new(creds),
        s3_compat::S3Config::default(),
    )
    .build();
    let setup: [(http::Method, &str, &[u8]); 2] = [
        (http::Method::PUT, "/fuzz", b""),
        (http::Method::PUT, "/fuzz/obj", b"fuzz object body"),
    ];
    for (method, target, body) in setup {
        let req = s3_signed(method, target, Vec::new(), Bytes::from_static(body), true)?;
        let resp = svc.handle(req).await;
        if !resp.status().is_success() {
            return None;
        }
    }
    Some(svc)
}

fn split_requests(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(5).position(|w| w == b"\n---\n") {
        out.push(&rest[..at]);
        rest = &rest[at + 5..];
    }
    out.push(rest);
    out
}

fn s3_parse_request(data: &[u8]) -> Option<http::Request<http_body_util::Full<Bytes>>> {
    use http::Method;
    let (&flags, rest) = data.split_first()?;
    let methods = [
        Method::GET,
        Method::PUT,
        Method::POST,
        Method::DELETE,
        Method::HEAD,
    ];
    let method = methods[usize::from(flags & 7) % methods.len()].clone();
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let target = lines.next()?.trim_start();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .filter(|(n, v)| {
            http::HeaderName::from_bytes(n.as_bytes()).is_ok()
                && http::HeaderValue::from_str(v).is_ok()
                && n != "host"
        })
        .take(32)
        .collect();
    let mut headers = headers;
    // What hyper would have put there for a body it read by length.
    if !headers
        .iter()
        .any(|(n, _)| n == "content-length" || n == "transfer-encoding")
    {
        headers.push(("content-length".to_owned(), body.len().to_string()));
    }
    let body = Bytes::copy_from_slice(body);
    if flags & 8 != 0 {
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .header("host", "localhost");
        for (n, v) in &headers {
            b = b.header(n.as_str(), v.as_str());
        }
        return b.body(http_body_util::Full::new(body)).ok();
    }
    // The signer adds its own; a second copy would only fail the check.
    let headers = headers
        .into_iter()
        .filter(|(n, _)| !matches!(n.as_str(), "authorization" | "x-amz-date"))
        .collect();
    s3_signed(method, target, headers, body, flags & 16 != 0)
}

/// A request signed with the fixture's key, as an SDK would sign it.
fn s3_signed(
    method: http::Method,
    target: &str,
    headers: Vec<(String, String)>,
    body: Bytes,
    sign_body: bool,
) -> Option<http::Request<http_body_util::Full<Bytes>>> {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
        SigningSettings, UriPathNormalizationMode,
    };
    let uri: http::Uri = target.parse().ok()?;
    uri.path_and_query()?;
    let url = format!("http://localhost{target}");
    let identity: aws_smithy_runtime_api::client::identity::Identity =
        aws_credential_types::Credentials::new(S3_FUZZ_KEY.0, S3_FUZZ_KEY.1, None, None, "fuzz")
            .into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .ok()?
        .into();
    let mut all: Vec<(String, String)> = vec![("host".to_owned(), "localhost".to_owned())];
    all.extend(headers);
    let signable_body = if sign_body {
        SignableBody::Bytes(&body)
    } else {
        SignableBody::UnsignedPayload
    };
    let signable = SignableRequest::new(
        method.as_str(),
        &url,
        all.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        signable_body,
    )
    .ok()?;
    let (instructions, _) = sign(signable, &params).ok()?.into_parts();
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in &all {
        b = b.header(n.as_str(), v.as_str());
    }
    let (signed_headers, _) = instructions.into_parts();
    for h in signed_headers {
        b = b.header(h.name(), h.value());
    }
    b.body(http_body_util::Full::new(body)).ok()
}

/// Serves one request and reads its whole answer, within bounds: the answer
/// must come, must not be a 500, and its body must end.
async fn s3_serve_checked(
    svc: &s3_compat::S3Service,
    req: http::Request<http_body_util::Full<Bytes>>,
) {
    use http_body_util::BodyExt;
    let what = format!("{} {}", req.method(), req.uri());
    let limit = std::time::Duration::from_secs(10);
    let resp = tokio::time::timeout(limit, svc.handle(req)).await;
    let Ok(resp) = resp else {
        panic!("S3 service did not answer {what} within {limit:?}");
    };
    let status = resp.status();
    let body = tokio::time::timeout(
        limit,
        http_body_util::Limited::new(resp.into_body(), 64 << 20).collect(),
    )
    .await;
    assert!(body.is_ok(), "S3 answer body to {what} did not end");
    // What each request got, when reproducing an input by hand.
    if std::env::var_os("STRATO_FUZZ_VERBOSE").is_some() {
        eprintln!("{what} -> {status}");
    }
    assert!(
        status != http::StatusCode::INTERNAL_SERVER_ERROR,
        "S3 service answered 500 to {what}"
    );
}

/// Swarm peer-wire frames as an agent reads them off a peer's connection
/// (chunks bounded by a manifest's longest chunk).
pub fn swarm_wire(data: &[u8]) {
    use strato::distribute::swarm::wire;
    let _ = wire::decode_all(
        data,
        &wire::Limits {
            max_chunk: MAX_CHUNK,
        },
    );
}
