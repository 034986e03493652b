//! The chunk API on the `strato serve` port, driven through the library's
//! SigV4 client and raw unsigned HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::io::{Read, Write};

use bytes::Bytes;
use common::*;
use strato::chunk_api::{ChunkClient, ClientError, Keys};
use strato::store::{ChunkId, ManifestEntry};

fn client(s: &Server) -> ChunkClient {
    ChunkClient::new(
        &s.endpoint,
        Keys {
            access_key: s.access_key.clone(),
            secret_key: s.secret_key.clone(),
        },
        "us-east-1",
    )
    .unwrap()
}

/// A server holding `imgs/a.img` (random data, then a zero tail).
fn server_with_image(size: usize) -> (Server, Vec<u8>) {
    let st = Strato::new("redb");
    let dir = tempfile::tempdir().unwrap();
    let mut data = random_bytes(size, 7);
    data[size / 2..].fill(0);
    let f = dir.path().join("a.img");
    std::fs::write(&f, &data).unwrap();
    st.ok(&["mb", "imgs"]);
    st.put(&f, "imgs/a.img", "block");
    (Server::start_with(st, &[]), data)
}

fn raw_http(host: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn unsigned_requests_are_refused() {
    let (s, _) = server_with_image(1 << 20);
    let id = ChunkId::of(b"hello").to_hex();
    for req in [
        format!("GET /chunks/{id} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", s.host),
        format!("GET /chunks/manifest/imgs/a.img HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", s.host),
        format!("PUT /chunks/{id} HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", s.host),
    ] {
        let resp = raw_http(&s.host, &req);
        assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    }
    // Wrong secret: the signature does not verify.
    let bad = ChunkClient::new(
        &s.endpoint,
        Keys {
            access_key: s.access_key.clone(),
            secret_key: "wrong-secret-wrong-secret-wrong-secret00".into(),
        },
        "us-east-1",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(bad.manifest("imgs", "a.img")).unwrap_err();
    assert!(
        matches!(e, ClientError::Status { status, .. } if status == 403),
        "{e}"
    );
}

#[test]
fn chunks_manifest_and_have() {
    let (s, data) = server_with_image(4 << 20);
    let c = client(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let m = c.manifest("imgs", "a.img").await.unwrap();
        assert_eq!(m.size, data.len() as u64);
        assert_eq!(m.etag, md5_hex(&data));
        assert!(m.profile.starts_with("block"), "{}", m.profile);
        // The zero half is zero runs, never stored.
        assert!(m.chunks.iter().any(|e| e.id.is_zero_run()));

        // Every stored chunk reads back verified, in order, as the object.
        let mut rebuilt = Vec::new();
        for e in &m.chunks {
            if e.id.is_zero_run() {
                rebuilt.resize(rebuilt.len() + e.len as usize, 0);
            } else {
                rebuilt.extend_from_slice(&c.get_chunk(&e.id).await.unwrap());
            }
        }
        assert!(rebuilt == data);

        // PUT: wrong bytes refused with 400, right bytes stored once.
        let body = Bytes::from(random_bytes(100_000, 99));
        let id = ChunkId::of(&body);
        let e = c
            .put_chunk(&id, Bytes::from_static(b"not those bytes"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Status { status, message, .. }
            if *status == 400 && message.contains("do not hash")),
            "{e}"
        );
        let missing = c.get_chunk(&id).await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        assert!(c.put_chunk(&id, body.clone()).await.unwrap());
        assert!(!c.put_chunk(&id, body.clone()).await.unwrap());
        assert_eq!(c.get_chunk(&id).await.unwrap(), body);

        // have: answers exactly the subset held.
        let absent = ChunkId::of(b"never stored");
        let stored = m.chunks.iter().find(|e| !e.id.is_zero_run()).unwrap().id;
        let held = c.have(&[absent, id, stored]).await.unwrap();
        assert_eq!(held, [id, stored].into_iter().collect());

        let e = c.manifest("imgs", "nope").await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
    });
    // HEAD over raw signed HTTP is covered by the client; the S3 API still works beside it.
    let out = s.strato.cmd().arg("--version").output().unwrap();
    assert!(out.status.success());
}

#[test]
fn batches_of_pages_go_in_and_out_in_few_requests() {
    let (s, _) = server_with_image(1 << 20);
    let c = client(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = random_bytes(3000 * 4096, 31);
    let pages: Vec<(ChunkId, Bytes)> = data
        .chunks(4096)
        .map(|p| (ChunkId::of(p), Bytes::copy_from_slice(p)))
        .collect();
    assert_eq!(rt.block_on(c.put_many(&pages)).unwrap(), 3000);
    assert_eq!(
        rt.block_on(c.put_many(&pages[..10])).unwrap(),
        0,
        "held already"
    );
    let unknown = ChunkId::of(b"never stored");
    let mut ids: Vec<ChunkId> = pages.iter().map(|(id, _)| *id).collect();
    ids.push(unknown);
    let got = rt.block_on(c.get_many(&ids)).unwrap();
    assert_eq!(got.len(), 3000, "absent ids are left out");
    assert!(!got.contains_key(&unknown));
    for (id, p) in &pages {
        assert_eq!(&got[id], p);
    }

    // One wrong frame: the batch is refused whole and nothing is stored.
    let fresh = random_bytes(3 * 4096, 32);
    let mut bad: Vec<(ChunkId, Bytes)> = fresh
        .chunks(4096)
        .map(|p| (ChunkId::of(p), Bytes::copy_from_slice(p)))
        .collect();
    bad[1].1 = Bytes::from(vec![9u8; 4096]);
    let e = rt.block_on(c.put_many(&bad)).unwrap_err();
    assert!(
        matches!(&e, ClientError::Status { status, .. } if *status == 400),
        "{e}"
    );
    let held = rt
        .block_on(c.have(&bad.iter().map(|(id, _)| *id).collect::<Vec<_>>()))
        .unwrap();
    assert!(held.is_empty(), "a refused batch stored {held:?}");
}

#[test]
fn blocks_of_indexed_images_resolve_by_their_own_id() {
    let st = Strato::new("redb");
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2 << 20, 33);
    let f = dir.path().join("disk.img");
    std::fs::write(&f, &data).unwrap();
    st.ok(&["mb", "--block-index", "imgs"]);
    st.ok(&["mb", "plain"]);
    st.put(&f, "imgs/disk.img", "block");
    st.put(&f, "plain/disk.img", "cdc");
    let status = st.ok(&["block-index", "status"]);
    assert!(status.contains("indexed buckets: imgs"), "{status}");
    let s = Server::start_with(st, &[]);
    let c = client(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Every 4 KiB page of the image is known to the site by its page id.
    let pages: Vec<ChunkId> = data.chunks(4096).map(ChunkId::of).collect();
    let held = rt.block_on(c.have(&pages)).unwrap();
    assert_eq!(held.len(), pages.len());
    let page = rt.block_on(c.get_chunk(&pages[77])).unwrap();
    assert_eq!(&page[..], &data[77 * 4096..78 * 4096]);
    let some = rt.block_on(c.get_many(&pages[100..164])).unwrap();
    assert_eq!(some.len(), 64);
    assert_eq!(&some[&pages[100]][..], &data[100 * 4096..101 * 4096]);
}

#[test]
fn objects_committed_from_held_chunks_survive_gc() {
    let st = Strato::new("redb");
    st.ok(&["mb", "keep"]);
    let s = Server::start_with(st, &[]);
    let c = client(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let data = random_bytes(50 * 4096, 41);
    let pages: Vec<(ChunkId, Bytes)> = data
        .chunks(4096)
        .map(|p| (ChunkId::of(p), Bytes::copy_from_slice(p)))
        .collect();
    rt.block_on(c.put_many(&pages)).unwrap();
    // Eight more pages nobody keeps: the control for the GC below.
    let loose: Vec<(ChunkId, Bytes)> = random_bytes(8 * 4096, 42)
        .chunks(4096)
        .map(|p| (ChunkId::of(p), Bytes::copy_from_slice(p)))
        .collect();
    rt.block_on(c.put_many(&loose)).unwrap();
    let entries: Vec<ManifestEntry> = pages
        .iter()
        .map(|(id, p)| ManifestEntry {
            id: *id,
            len: p.len() as u32,
        })
        .collect();

    // A chunk the site lacks, a wrong length, a bucket that does not
    // exist: each refused, and nothing is committed.
    let mut missing = entries.clone();
    missing[3].id = ChunkId::of(b"never stored");
    let e = rt
        .block_on(c.commit_manifest("keep", "vm1", &missing))
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Status { status, .. } if *status == 404),
        "{e}"
    );
    let mut wrong_len = entries.clone();
    wrong_len[0].len = 100;
    let e = rt
        .block_on(c.commit_manifest("keep", "vm1", &wrong_len))
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Status { status, .. } if *status == 400),
        "{e}"
    );
    let e = rt
        .block_on(c.commit_manifest("nosuch", "vm1", &entries))
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Status { status, .. } if *status == 404),
        "{e}"
    );
    assert!(rt.block_on(c.manifest("keep", "vm1")).is_err());

    let etag = rt
        .block_on(c.commit_manifest("keep", "migrations/vm1", &entries))
        .unwrap();
    assert_eq!(etag, md5_hex(&data));

    // The pages are referenced now: a GC with no grace (server stopped, as
    // GC needs the store to itself) keeps every one, and the object reads
    // back as the pages in order.
    let mut s = s;
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let gc = s.strato.json(&["gc", "--grace", "0"]);
    assert_eq!(gc["reclaimed_chunks"], 8, "only the loose pages go: {gc}");
    let out = s.strato.dir.path().join("vm1.out");
    s.strato
        .ok(&["get", "keep/migrations/vm1", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// The repository's signing key: made on first use (secret files 0600),
/// the same from `strato trust-key` as from the server's banner and its
/// `GET /chunks/trust-keys`, which needs a signature like every chunk API
/// call.
#[test]
fn the_repository_publishes_its_trust_key() {
    let st = Strato::new("redb");
    let printed = st.ok(&["trust-key"]);
    let key = printed.trim();
    assert_eq!(printed.lines().count(), 1, "{printed:?}");
    strato::trust::PublicKey::parse(key).expect("a key --trust-key takes");
    assert_eq!(
        st.ok(&["trust-key"]).trim(),
        key,
        "the same key on a second call"
    );
    for e in std::fs::read_dir(st.data_dir().join("trust")).unwrap() {
        let e = e.unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&e.metadata().unwrap().permissions());
        if e.file_name() != "keyring.json" {
            assert_eq!(mode & 0o077, 0, "{:?} is readable by others", e.path());
        }
    }

    let s = Server::start_with(st, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = rt.block_on(client(&s).trust_keys()).unwrap();
    assert_eq!(keys, [key.to_string()]);
    let resp = raw_http(
        &s.host,
        &format!(
            "GET /chunks/trust-keys HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.host
        ),
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let out = s.strato.ok(&["--json", "trust-key"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["trust_key"], key);
}
