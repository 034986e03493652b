//! The testbed's daemons do what the engine and backend tests rely on.

use std::time::Instant;

use strato_testbed::{shared_ceph, shared_postgres, Ceph, Postgres};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        // Ends with an error when the server is stopped under it.
        let _ = conn.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_survive_stop_and_kill9() {
    let t0 = Instant::now();
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()
        .expect("starting PostgreSQL");
    eprintln!("postgres start: {:.2} s", t0.elapsed().as_secs_f64());
    assert!(pg.url().starts_with("postgres://strato_"));
    let url = pg.create_database("smoke");
    assert!(url.ends_with("/smoke"));

    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BYTEA NOT NULL)")
        .await
        .unwrap();
    for i in 0..10i32 {
        c.execute(
            "INSERT INTO kv VALUES ($1, $2)",
            &[&format!("k{i}"), &vec![i as u8; 100]],
        )
        .await
        .unwrap();
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);

    // Clean stop, same port and data after the restart.
    let t1 = Instant::now();
    tokio::task::block_in_place(|| pg.stop());
    assert!(pg.pid().is_none());
    assert!(
        c.query_one("SELECT 1", &[]).await.is_err(),
        "the session must be gone with the server"
    );
    assert!(tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_err());
    let t1b = Instant::now();
    tokio::task::block_in_place(|| pg.start_again());
    eprintln!(
        "postgres stop: {:.2} s, start_again: {:.2} s",
        (t1b - t1).as_secs_f64(),
        t1b.elapsed().as_secs_f64()
    );
    let c = connect(&url).await;
    let v: Vec<u8> = c
        .query_one("SELECT v FROM kv WHERE k = 'k7'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, vec![7u8; 100]);

    // A committed row survives a crash of the server (fsync is on).
    c.execute("INSERT INTO kv VALUES ('after', 'x')", &[])
        .await
        .unwrap();
    let t2 = Instant::now();
    tokio::task::block_in_place(|| pg.kill9());
    let t2b = Instant::now();
    tokio::task::block_in_place(|| pg.start_again());
    eprintln!(
        "postgres kill9: {:.2} s, start_again (crash recovery): {:.2} s",
        (t2b - t2).as_secs_f64(),
        t2b.elapsed().as_secs_f64()
    );
    let c = connect(&url).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 11);

    // Databases are separate.
    let other = pg.create_database("other");
    let c2 = connect(&other).await;
    assert!(c2.query_one("SELECT count(*) FROM kv", &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_wrong_password_and_bad_names() {
    let pg = tokio::task::spawn_blocking(shared_postgres).await.unwrap();
    let url = pg.create_database("auth_check");
    let c = connect(&url).await;
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let enc: String = c
        .query_one("SHOW password_encryption", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(enc, "scram-sha-256");
    let fsync: String = c.query_one("SHOW fsync", &[]).await.unwrap().get(0);
    assert_eq!(fsync, "on");

    let wrong = url.replace(pg.password(), "not-the-password");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password must be refused");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{err:?}"
    );

    // Bad names are refused before anything reaches the server.
    for bad in ["", "1abc", "a-b", "x\"; DROP DATABASE postgres; --"] {
        assert!(pg.try_create_database(bad).is_err(), "{bad:?} accepted");
    }
    // An existing name is an error, not a silent reuse.
    assert!(pg.try_create_database("auth_check").is_err());
}

/// Status line code of a raw HTTP/1.1 request to radosgw.
#[allow(clippy::unwrap_used)] // a test helper: failing is its job
fn raw_status(port: u16, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    let line = String::from_utf8_lossy(&head).into_owned();
    line[9..12]
        .parse()
        .unwrap_or_else(|_| panic!("bad status line {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceph_objects_auth_and_rgw_restart() {
    let t0 = Instant::now();
    let ceph = tokio::task::spawn_blocking(Ceph::start)
        .await
        .unwrap()
        .expect("starting Ceph");
    eprintln!("ceph start: {:.2} s", t0.elapsed().as_secs_f64());
    assert!(ceph.endpoint().starts_with("http://127.0.0.1:"));
    ceph.create_bucket("smoke-bucket");
    let s3 = ceph.s3_client();

    // PUT / GET / LIST / DELETE of a few MiB.
    let body: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let t1 = Instant::now();
    s3.put_object()
        .bucket("smoke-bucket")
        .key("dir/obj")
        .body(body.clone().into())
        .send()
        .await
        .unwrap();
    s3.put_object()
        .bucket("smoke-bucket")
        .key("dir/small")
        .body(b"hello".to_vec().into())
        .send()
        .await
        .unwrap();
    eprintln!(
        "first signed requests answered {:.2} s after start; PUT 3 MiB took {:.2} s",
        t0.elapsed().as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    let got = s3
        .get_object()
        .bucket("smoke-bucket")
        .key("dir/obj")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(got.len(), body.len());
    assert!(got == body[..], "GET returned other bytes than the PUT");
    let list = s3
        .list_objects_v2()
        .bucket("smoke-bucket")
        .prefix("dir/")
        .send()
        .await
        .unwrap();
    let keys: Vec<&str> = list.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["dir/obj", "dir/small"]);
    s3.delete_object()
        .bucket("smoke-bucket")
        .key("dir/small")
        .send()
        .await
        .unwrap();
    let err = s3
        .head_object()
        .bucket("smoke-bucket")
        .key("dir/small")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(404));

    // Unsigned and wrongly signed requests are refused.
    let port = ceph.port();
    let status = tokio::task::spawn_blocking(move || {
        raw_status(
            port,
            "GET /smoke-bucket/dir/obj HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 403, "an anonymous GET must be refused");
    let status = tokio::task::spawn_blocking(move || {
        raw_status(
            port,
            "PUT /smoke-bucket/anon HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 403, "an anonymous PUT must be refused");
    let wrong = strato_testbed::s3_client(&ceph.endpoint(), ceph.access_key(), "wrong-secret");
    let err = wrong
        .get_object()
        .bucket("smoke-bucket")
        .key("dir/obj")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert_eq!(
        err.as_service_error()
            .and_then(aws_sdk_s3::error::ProvideErrorMetadata::code),
        Some("SignatureDoesNotMatch")
    );
    assert!(s3
        .head_object()
        .bucket("smoke-bucket")
        .key("anon")
        .send()
        .await
        .is_err());

    // radosgw down: requests fail; back up on the same port: data intact.
    tokio::task::block_in_place(|| ceph.stop_rgw());
    let err = s3
        .head_object()
        .bucket("smoke-bucket")
        .key("dir/obj")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.raw_response().is_none(),
        "no HTTP answer expected: {err:?}"
    );
    let t2 = Instant::now();
    tokio::task::block_in_place(|| ceph.start_rgw());
    eprintln!("radosgw restart: {:.2} s", t2.elapsed().as_secs_f64());
    let head = s3
        .head_object()
        .bucket("smoke-bucket")
        .key("dir/obj")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(body.len() as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_ceph_serves_buckets() {
    let ceph = tokio::task::spawn_blocking(shared_ceph).await.unwrap();
    ceph.create_bucket("shared-one");
    // S3 bucket names have at least 3 characters.
    assert!(ceph.try_create_bucket("x").is_err());
    let s3 = ceph.s3_client();
    s3.put_object()
        .bucket("shared-one")
        .key("k")
        .body(vec![1u8; 1000].into())
        .send()
        .await
        .unwrap();
    let buckets = s3.list_buckets().send().await.unwrap();
    assert!(buckets
        .buckets()
        .iter()
        .any(|b| b.name() == Some("shared-one")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceph_bluestore_on_a_sparse_file() {
    let t0 = Instant::now();
    let ceph = tokio::task::spawn_blocking(|| {
        Ceph::start_with(strato_testbed::CephOptions { bluestore: true })
    })
    .await
    .unwrap()
    .expect("starting Ceph with bluestore");
    eprintln!(
        "ceph (bluestore) start: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let block = ceph.conf_path().with_file_name("bluestore.img");
    let meta = std::fs::metadata(&block).expect("bluestore block file");
    assert_eq!(meta.len(), 20 << 30);
    ceph.create_bucket("blue");
    let s3 = ceph.s3_client();
    let body = vec![0x5au8; 1 << 20];
    s3.put_object()
        .bucket("blue")
        .key("k")
        .body(body.clone().into())
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket("blue")
        .key("k")
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert!(got == body[..]);
    // Sparse: far less allocated than its length.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&block).unwrap();
    assert!(
        meta.blocks() * 512 < 2 << 30,
        "{} bytes allocated",
        meta.blocks() * 512
    );
}
