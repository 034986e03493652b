//! Two `strato serve` frontends over one PostgreSQL database (issue 20, the
//! metadata half): separate data directories, so each keeps its segments
//! locally, while buckets, objects and manifests are shared. A GET of object
//! data through the frontend that did not ingest it needs shared segments
//! (the s3 segment backend), so these tests look at HEAD and listings.
//!
//! Users and keys are not in the metadata: they come from the config file or
//! STRATO_ACCESS_KEY / STRATO_SECRET_KEY of each frontend, so both are given
//! the same keys here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;
#[path = "common/frontend.rs"]
mod frontend;
#[path = "common/sdk.rs"]
mod sdk;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::{Server, Strato};
use frontend::Frontend;

/// A frontend over the PostgreSQL database at `url`.
fn frontend(url: &str) -> Frontend {
    Frontend::start("postgres", &[("STRATO_META_URL", url.to_string())])
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn put(c: &aws_sdk_s3::Client, bucket: &str, key: &str, data: Vec<u8>) -> String {
    c.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {bucket}/{key}: {e:?}"))
        .e_tag()
        .unwrap_or_default()
        .to_string()
}

async fn keys(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    sdk::keys(c, bucket).await
}

#[test]
fn two_frontends_share_buckets_and_objects() {
    let pg = strato_testbed::shared_postgres();
    let url = pg.create_database("shared_two_frontends");
    let f1 = frontend(&url);
    let f2 = frontend(&url);
    // The banner names the engine and the database, never the password.
    for f in [&f1, &f2] {
        let line = f
            .banner
            .iter()
            .find(|l| l.trim_start().starts_with("metadata"))
            .unwrap_or_else(|| panic!("no metadata line in {:?}", f.banner));
        assert!(line.contains("postgres"), "{line}");
        assert!(
            line.contains(&format!("{}@127.0.0.1:{}", pg.user(), pg.port())),
            "{line}"
        );
        assert!(line.contains("shared_two_frontends"), "{line}");
        assert!(!f.banner.join("\n").contains(pg.password()));
    }
    let (c1, c2) = (f1.client(), f2.client());
    rt().block_on(async {
        c1.create_bucket().bucket("shared").send().await.unwrap();
        // Visible on the other frontend at once.
        let names: Vec<String> = c2
            .list_buckets()
            .send()
            .await
            .unwrap()
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .collect();
        assert_eq!(names, vec!["shared".to_string()]);
        c2.head_bucket().bucket("shared").send().await.unwrap();
        // Creating it again through the other frontend finds it there (the
        // owner's repeat is accepted, as us-east-1 does) and makes no second.
        c2.create_bucket().bucket("shared").send().await.unwrap();
        assert_eq!(c1.list_buckets().send().await.unwrap().buckets().len(), 1);

        let data = common::random_bytes(300_000, 7);
        let etag = put(&c1, "shared", "from-1", data.clone()).await;
        let head = c2
            .head_object()
            .bucket("shared")
            .key("from-1")
            .send()
            .await
            .unwrap();
        assert_eq!(head.content_length(), Some(data.len() as i64));
        assert_eq!(head.e_tag(), Some(etag.as_str()));
        assert_eq!(
            etag.trim_matches('"'),
            common::md5_hex(&data),
            "single-part ETag is the MD5"
        );
        put(&c2, "shared", "from-2", b"small".to_vec()).await;
        assert_eq!(keys(&c1, "shared").await, vec!["from-1", "from-2"]);
        assert_eq!(keys(&c2, "shared").await, vec!["from-1", "from-2"]);
        // A delete on one is seen by the other; the bucket empties for both.
        c2.delete_object()
            .bucket("shared")
            .key("from-1")
            .send()
            .await
            .unwrap();
        assert_eq!(keys(&c1, "shared").await, vec!["from-2"]);
        let e = c1
            .head_object()
            .bucket("shared")
            .key("from-1")
            .send()
            .await
            .unwrap_err();
        assert_eq!(sdk::status(&e), Some(404));
    });
    for f in [&f1, &f2] {
        assert!(!f.stderr().contains(pg.password()), "password in the log");
    }
    // The offline admin commands open the same shared metadata.
    drop(f2);
    let stats = Command::new(common::strato_bin())
        .env("STRATO_DATA_DIR", f1.server.strato.dir.path().join("other"))
        .env("STRATO_META_URL", &url)
        .env_remove("STRATO_CONFIG")
        .env_remove("STRATO_ENGINE")
        .arg("stats")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&stats.stdout);
    assert!(
        stats.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    assert!(out.contains("postgres"), "{out}");
}

#[test]
fn postgres_down_gives_503_and_nothing_acknowledged_is_lost() {
    // Its own server: stopping the shared one would break the other tests.
    let pg = strato_testbed::Postgres::start().unwrap();
    let url = pg.create_database("shared_down");
    let f1 = frontend(&url);
    let f2 = frontend(&url);
    let (c1, c2) = (f1.client(), f2.client());
    let rt = rt();
    let mut acked = Vec::new();
    rt.block_on(async {
        c1.create_bucket().bucket("bkt").send().await.unwrap();
        for i in 0..5 {
            let key = format!("before-{i}");
            put(&c1, "bkt", &key, common::random_bytes(50_000 + i, i as u64)).await;
            acked.push(key);
        }
    });
    pg.stop();
    let t0 = Instant::now();
    rt.block_on(async {
        let e = c1
            .put_object()
            .bucket("bkt")
            .key("during")
            .body(ByteStream::from(common::random_bytes(70_000, 99)))
            .send()
            .await
            .unwrap_err();
        assert_eq!(sdk::status(&e), Some(503), "{e:?}");
        assert_eq!(sdk::code(&e), "ServiceUnavailable");
        let msg = e
            .as_service_error()
            .and_then(aws_sdk_s3::error::ProvideErrorMetadata::message)
            .unwrap_or_default()
            .to_string();
        assert!(msg.contains("postgres"), "{msg}");
        assert!(!msg.contains(pg.password()));
        // Reads fail the same way on the other frontend.
        let e = c2.list_objects_v2().bucket("bkt").send().await.unwrap_err();
        assert_eq!(sdk::status(&e), Some(503), "{e:?}");
    });
    let down_for = t0.elapsed();
    assert!(down_for < Duration::from_secs(60), "{down_for:?}");
    pg.start_again();
    rt.block_on(async {
        // The next PUT succeeds (the frontends reconnect by themselves) and
        // everything acknowledged before is still there, on both.
        put(&c2, "bkt", "after", b"after".to_vec()).await;
        acked.push("after".into());
        acked.sort();
        assert_eq!(keys(&c1, "bkt").await, acked);
        assert_eq!(keys(&c2, "bkt").await, acked);
        // The refused PUT left nothing behind.
        let e = c1
            .head_object()
            .bucket("bkt")
            .key("during")
            .send()
            .await
            .unwrap_err();
        assert_eq!(sdk::status(&e), Some(404));
    });
    let log = f1.stderr();
    assert!(log.contains("postgres"), "{log}");
    assert!(!log.contains(pg.password()), "password in the log");
}

#[test]
fn a_schema_from_the_future_is_refused_with_a_clear_message() {
    let pg = strato_testbed::shared_postgres();
    let url = pg.create_database("shared_future");
    let strato = Strato::new("postgres");
    // First open: the schema is made (by an offline command, like a frontend).
    let out = strato
        .cmd()
        .env("STRATO_META_URL", &url)
        .arg("stats")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let psql = common::require_tool("psql");
    let set = Command::new(psql)
        .args([url.as_str(), "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("UPDATE strato_schema SET version = version + 1000")
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let out = strato
        .cmd()
        .env("STRATO_META_URL", &url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("STRATO_ACCESS_KEY", "STRTESTACCESSKEY0001")
        .env(
            "STRATO_SECRET_KEY",
            "test-secret-key-0123456789abcdefghijklmn",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started on a future schema");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema version 1001") && err.contains("upgrade strato"),
        "{err}"
    );
    assert!(!err.contains(pg.password()), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("strato serving"),
        "serve printed its banner"
    );
}
