//! The web console in a real browser (issue 17): `strato serve` with two
//! users, a propagation kept in progress through the chunk API, then
//! tests/console/e2e.mjs drives Debian's headless Chromium through
//! playwright-core: wrong password refused, sign-in, another user's bucket
//! not visible, a POST without the CSRF token refused, a 50 MiB upload
//! through the page listed with its dedup figures, the same file again
//! storing 0 new bytes, download compared, delete, the running propagation
//! with its progress, a screenshot of each page (target/console-shots/).
//!
//! A missing chromium, node or node_modules fails the test with what to run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "console/harness.rs"]
mod harness;
#[path = "common/sdk.rs"]
mod sdk;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::*;
use harness::{ConsoleServer, BOB_AK, BOB_SK, CAROL_AK, CAROL_SK};
use strato::chunk_api::wire::TicketRequest;
use strato::chunk_api::{ChunkClient, Keys};

const FILE_BYTES: usize = 50 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.is_file(),
        "/usr/bin/chromium is missing: apt-get install -y --no-install-recommends chromium \
         (scripts/test.sh installs it)"
    );
    let node = require_tool("node");
    let pw = root.join("tests/console/node_modules/playwright-core/package.json");
    assert!(
        pw.is_file(),
        "tests/console/node_modules is missing: run npm ci --prefix tests/console \
         (scripts/test.sh does)"
    );

    // Sampled every second, so the charts have lines by the time the
    // browser looks at them.
    let cs = ConsoleServer::start(&[
        ("STRATO_CONSOLE_SAMPLE_SECS", "1"),
        ("STRATO_CONSOLE_HEALTH_SECS", "1"),
    ]);
    let s = &cs.server;
    let admin = sdk::client(s);
    let bob = sdk::client_with(&s.endpoint, BOB_AK, BOB_SK);
    bob.create_bucket()
        .bucket("bobs-private-images")
        .send()
        .await
        .unwrap();

    // A propagation in progress: a chain ticket for an image, then half of
    // its chunks fetched through the chunk API, as a chain head would.
    admin.create_bucket().bucket("golden").send().await.unwrap();
    admin
        .put_object()
        .bucket("golden")
        .key("debian-12.img")
        .body(ByteStream::from(random_bytes(6 << 20, 21)))
        .send()
        .await
        .unwrap();
    let chunks = ChunkClient::new(
        &s.endpoint,
        Keys {
            access_key: s.access_key.clone(),
            secret_key: s.secret_key.clone(),
        },
        "us-east-1",
    )
    .unwrap();
    let grant = chunks
        .ticket(
            "golden",
            "debian-12.img",
            &TicketRequest {
                nodes: Some(vec!["10.0.0.2:7700".into(), "10.0.0.3:7700".into()]),
                group: None,
                lifetime_secs: None,
            },
        )
        .await
        .unwrap();
    let ids: Vec<_> = grant.manifest.chunks.iter().map(|c| c.id).collect();
    assert!(ids.len() >= 2, "{} chunks", ids.len());
    for id in &ids[..ids.len() / 2] {
        chunks.get_chunk(id).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk-50m.img");
    write_random(&file, FILE_BYTES, 17);
    let shots = root.join("target/console-shots");
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking({
        let (endpoint, ak, sk) = (
            s.endpoint.clone(),
            s.access_key.clone(),
            s.secret_key.clone(),
        );
        let (file, shots) = (file.clone(), shots.clone());
        move || {
            Command::new(node)
                .arg(root.join("tests/console/e2e.mjs"))
                .current_dir(root.join("tests/console"))
                .env("STRATO_ENDPOINT", endpoint)
                .env("STRATO_AK", ak)
                .env("STRATO_SK", sk)
                .env("STRATO_OTHER_BUCKET", "bobs-private-images")
                .env("STRATO_OTHER_AK", BOB_AK)
                .env("STRATO_OTHER_SK", BOB_SK)
                .env("STRATO_NEW_AK", CAROL_AK)
                .env("STRATO_NEW_SK", CAROL_SK)
                .env("STRATO_FILE", file)
                .env("STRATO_TRANSFER_KEY", "golden/debian-12.img")
                .env("STRATO_SHOTS", shots)
                .env("CHROMIUM", "/usr/bin/chromium")
                .output()
                .expect("running node")
        }
    })
    .await
    .unwrap();
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!("e2e.mjs printed no JSON ({e}); stdout:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        out.status.success() && report["ok"] == true,
        "e2e.mjs failed ({}): {}\nstderr:\n{stderr}",
        out.status,
        serde_json::to_string_pretty(&report).unwrap()
    );
    assert!(took < Duration::from_secs(240), "took {took:?}");
    assert_eq!(report["wrong_password_refused"], true);
    assert_eq!(report["other_bucket_hidden"], true);
    assert_eq!(report["csrf_status"], 403);
    assert_eq!(report["first_new_bytes"], FILE_BYTES as u64);
    assert_eq!(report["first_listed"]["unique"], FILE_BYTES as u64);
    assert_eq!(report["second_new_bytes"], 0);
    assert_eq!(report["second_listed"]["shared"], FILE_BYTES as u64);
    assert_eq!(report["download_equal"], true);
    assert_eq!(report["download_bytes"], FILE_BYTES as u64);
    assert_eq!(report["deleted"], true);
    assert_eq!(report["transfer"]["kind"], "chain");
    assert_eq!(report["first_visit_bucket"], "images");
    assert_eq!(report["first_visit_new_bytes"], 3 << 20);
    let progress = report["transfer"]["progress"].as_f64().unwrap();
    assert!(progress > 0.2 && progress < 0.9, "progress {progress}");
    for shot in [
        "first-visit",
        "signin",
        "images",
        "images-dedup",
        "object",
        "delete-confirm",
        "transfers",
        "repository",
        "health",
        "images-narrow",
    ] {
        let p = shots.join(format!("{shot}.png"));
        let len = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .len();
        assert!(len > 1000, "{} is {len} bytes", p.display());
    }
    // What the browser did is what the store holds.
    let got = admin
        .get_object()
        .bucket("browser-images")
        .key("disk-50m.img")
        .send()
        .await
        .unwrap();
    assert!(sdk::body_bytes(got).await == std::fs::read(&file).unwrap());
    assert!(admin
        .head_object()
        .bucket("browser-images")
        .key("disk-50m-copy.img")
        .send()
        .await
        .is_err());
    // Carol's first upload made the bucket, hers.
    let carol = sdk::client_with(&s.endpoint, CAROL_AK, CAROL_SK);
    let listed = carol.list_buckets().send().await.unwrap();
    let names: Vec<_> = listed.buckets().iter().filter_map(|b| b.name()).collect();
    assert_eq!(names, ["images"]);
    eprintln!("e2e in {took:?}: {}", report["steps"]);
}
