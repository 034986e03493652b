//! The client refuses a manifest of a version it does not read, with an
//! error that says so, instead of misreading its fields. The other end is
//! a real HTTP/1.1 listener on loopback answering one canned document.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::time::Duration;

use chunk_api::{ChunkClient, ClientError, Keys, ManifestError, MANIFEST_VERSION};
use strato_store::ChunkId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `body` as the answer to the first request on a fresh listener.
async fn answer_once(body: String) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Bounded: a GET's head is small; stop at its end.
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 << 10 {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        let _ = s.shutdown().await;
    });
    format!("http://{addr}")
}

fn client(endpoint: &str) -> ChunkClient {
    let keys = Keys {
        access_key: "AK".into(),
        secret_key: "SK".into(),
    };
    ChunkClient::new(endpoint, keys, "us-east-1")
        .unwrap()
        .with_timeout(Duration::from_secs(10))
}

fn doc(version: u32) -> String {
    let id = ChunkId::of(b"abc").to_hex();
    format!(
        r#"{{"version":{version},"bucket":"b","key":"k","size":3,"etag":"e","profile":"p","parts":0,"chunks":[{{"id":"{id}","len":3}}]}}"#
    )
}

#[tokio::test]
async fn an_unknown_manifest_version_is_a_clear_error() {
    let future = MANIFEST_VERSION + 1;
    let endpoint = answer_once(doc(future)).await;
    let e = client(&endpoint).manifest("b", "k").await.unwrap_err();
    assert!(
        matches!(
            &e,
            ClientError::Manifest { err: ManifestError::Version { found }, .. } if *found == future
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("manifest of b/k"), "{msg}");
    assert!(msg.contains(&format!("version {future}")), "{msg}");
}

#[tokio::test]
async fn the_current_version_is_read() {
    let endpoint = answer_once(doc(MANIFEST_VERSION)).await;
    let m = client(&endpoint).manifest("b", "k").await.unwrap();
    assert_eq!(m.size, 3);
    assert_eq!(m.entries()[0].id, ChunkId::of(b"abc"));
}
