//! The testbed's daemons do what the engine and backend tests rely on.

use std::time::Instant;

use strato_testbed::{shared_postgres, Postgres};

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
