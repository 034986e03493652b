//! PostgreSQL engine: the metadata of a repository shared by several
//! `strato serve` frontends.
//!
//! **Why tokio-postgres and not sqlx.** The [`MetaStore`] trait is
//! synchronous and the store is called from plain threads, rayon pools,
//! `spawn_blocking` pools and occasionally straight from tokio tasks. With
//! tokio-postgres the connection's I/O is one future (`Connection`) that we
//! spawn on a private runtime, while the `Client` side only talks to it over
//! channels: its futures need no reactor and can be driven from any thread with
//! `futures::executor::block_on`, which never panics with "Cannot start a
//! runtime from within a runtime". sqlx's queries need its runtime on the
//! calling task, it brings a pool, macros and offline query checking we do not
//! use, and its error type hides the SQLSTATE behind more layers. We need
//! three statements, bytea in and out, and exact control over what happens
//! around COMMIT; tokio-postgres is that and no more.
//!
//! **Schema.** One key-value table `strato_kv (k bytea primary key, v bytea)`,
//! keyed by the full key (table byte + key), so ordered range scans have
//! exactly the semantics of the embedded engines (bytea compares bytewise, as
//! `&[u8]` does). `strato_schema` holds the schema version; [`migrate`] runs
//! at open in one transaction under an advisory lock, so two frontends
//! starting together do not race, and a database newer than this binary is
//! refused.
//!
//! **Transactions.** `write` runs `f` in one SERIALIZABLE transaction. Reads go
//! to the database (inside the transaction's snapshot), writes are buffered
//! in the transaction and sent as two batched statements just before COMMIT.
//! A serialization failure or deadlock (SQLSTATE 40001, 40P01) rolls back and
//! runs `f` again, bounded, with backoff; so does a connection lost before
//! COMMIT was sent. A connection lost *during* COMMIT is different: the
//! server may or may not have committed, and running `f` again could apply a
//! change twice on top of itself (a reference-count increment, a multipart
//! completion that deletes its upload), so that case is reported as
//! [`StoreError::Unavailable`] and never retried here: the client was not
//! acknowledged and retries the whole request, which re-reads the state.

use std::collections::BTreeMap;
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use parking_lot::{Condvar, Mutex};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::{full_key, KeyValue, MetaStore, MetaTxn, Table};
use crate::error::{Result, StoreError};

/// The schema this binary knows. Index `i` of [`MIGRATIONS`] takes a database
/// from version `i` to `i + 1`.
pub const SCHEMA_VERSION: i32 = 1;

const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the key space of every table, as in the embedded engines.
    "CREATE TABLE strato_kv (k bytea PRIMARY KEY, v bytea NOT NULL)",
];

/// Advisory lock key for migrations ("strato" in ASCII).
const MIGRATION_LOCK: i64 = 0x7374_7261_746f;

/// Connections open at once (idle + in use) per store.
const MAX_CONNECTIONS: usize = 16;
/// How long a caller waits for a free connection.
const CHECKOUT_WAIT: Duration = Duration::from_secs(30);
/// Bound on one round trip (query or connect); a server that stops answering
/// without closing the socket costs at most this much.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts of one operation over lost connections before giving up.
const CONNECTION_ATTEMPTS: u32 = 5;
/// Runs of a write transaction's closure on serialization failures.
const CONFLICT_ATTEMPTS: u32 = 30;

const BACKEND: &str = "postgres";

/// A connection and its prepared statements.
struct Conn {
    client: Client,
    get: Statement,
    get_many: Statement,
    scan: Statement,
    upsert: Statement,
    delete: Statement,
}

/// What went wrong with one database round trip.
#[derive(Debug)]
enum Fault {
    /// Serialization failure or deadlock: the transaction rolled back.
    Conflict(String),
    /// The connection is gone (or never came up); nothing after the last
    /// acknowledged COMMIT happened.
    Lost(String),
    /// The server refused the statement; the connection is still usable.
    Refused(String),
}

impl Fault {
    fn of(e: &tokio_postgres::Error) -> Fault {
        let text = error_text(e);
        match e.code() {
            Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => Fault::Conflict(text),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => Fault::Conflict(text),
            // Class 08 is "connection exception"; 57P01..3 are the server
            // shutting down, crashing or starting up.
            Some(c)
                if c.code().starts_with("08")
                    || matches!(c.code(), "57P01" | "57P02" | "57P03") =>
            {
                Fault::Lost(text)
            }
            Some(_) => Fault::Refused(text),
            None if e.is_closed() || has_io_source(e) => Fault::Lost(text),
            None => Fault::Refused(text),
        }
    }
}

fn has_io_source(e: &tokio_postgres::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<std::io::Error>() {
            return true;
        }
        src = s.source();
    }
    false
}

/// The error with its database detail (tokio-postgres' Display says only "db
/// error" for server errors).
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

/// `url` without its password: `postgres://user@host:port/db`. Used in every
/// message and banner; the password never leaves [`PostgresMeta::open`].
pub fn redact_url(url: &str) -> String {
    let Ok(cfg) = Config::from_str(url) else {
        return "postgres://(unparseable url)".into();
    };
    let user = cfg.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            match cfg.get_ports().get(i).or(cfg.get_ports().first()) {
                Some(p) => format!("{host}:{p}"),
                None => host,
            }
        })
        .collect();
    let db = cfg
        .get_dbname()
        .map(|d| format!("/{d}"))
        .unwrap_or_default();
    format!("postgres://{user}{}{db}", hosts.join(","))
}

/// Connections: idle ones for reuse, and a count bounding how many exist.
struct Pool {
    idle: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

pub struct PostgresMeta {
    /// Owns the connection tasks and the timers; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    config: Config,
    shown: String,
    pool: Pool,
    /// Write transactions of this process run one at a time, as they do in the
    /// embedded engines: writers of one frontend then never conflict with
    /// each other on hot reference-count rows, and SERIALIZABLE retries are
    /// left for conflicts between frontends.
    write_lock: Mutex<()>,
}

impl Drop for PostgresMeta {
    fn drop(&mut self) {
        // A store may be dropped inside an async context, where dropping a
        // runtime (which blocks on its workers) panics.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A round trip that did not finish in time.
struct TimedOut;

impl PostgresMeta {
    /// Connect to `url`, bring the schema up to date (or refuse a newer one)
    /// and check that the server answers.
    pub fn open(url: &str) -> Result<PostgresMeta> {
        let shown = redact_url(url);
        let mut config = Config::from_str(url).map_err(|e| {
            StoreError::InvalidArgument(format!("invalid PostgreSQL url {shown}: {e}"))
        })?;
        config
            .application_name("strato")
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strato-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Meta(format!("starting the PostgreSQL runtime: {e}")))?;
        let meta = PostgresMeta {
            rt: Some(rt),
            config,
            shown,
            pool: Pool {
                idle: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
            write_lock: Mutex::new(()),
        };
        meta.migrate()?;
        Ok(meta)
    }

    /// The url without its password.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    fn handle(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| StoreError::Meta("the PostgreSQL engine is shutting down".into()))
    }

    /// Drive `fut` on this thread until it finishes or [`OP_TIMEOUT`] passes.
    /// The timer runs on the private runtime, so this works on any thread.
    fn wait<T>(&self, fut: impl Future<Output = T>) -> std::result::Result<T, TimedOut> {
        let Ok(rt) = self.handle() else {
            return Err(TimedOut);
        };
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        let timer = rt.spawn(async move {
            tokio::time::sleep(OP_TIMEOUT).await;
            let _ = tx.send(());
        });
        let out = futures::executor::block_on(async {
            futures::pin_mut!(fut);
            match future::select(fut, rx).await {
                Either::Left((v, _)) => Ok(v),
                Either::Right(_) => Err(TimedOut),
            }
        });
        timer.abort();
        out
    }

    /// One round trip, its failure classified.
    fn trip<T>(
        &self,
        fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> std::result::Result<T, Fault> {
        match self.wait(fut) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Fault::of(&e)),
            Err(TimedOut) => Err(Fault::Lost(format!(
                "no answer within {} s",
                OP_TIMEOUT.as_secs()
            ))),
        }
    }

    fn connect(&self) -> std::result::Result<Conn, Fault> {
        let rt = self.handle().map_err(|e| Fault::Lost(e.to_string()))?;
        let config = self.config.clone();
        let shown = self.shown.clone();
        let task = rt.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(db = %shown, "PostgreSQL connection ended: {e}");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = match self.wait(task) {
            Ok(Ok(Ok(c))) => c,
            Ok(Ok(Err(e))) => return Err(Fault::of(&e)),
            Ok(Err(join)) => return Err(Fault::Lost(format!("connect task failed: {join}"))),
            Err(TimedOut) => return Err(Fault::Lost("connect timed out".into())),
        };
        let prepare = |sql: &str| self.trip(client.prepare(sql));
        Ok(Conn {
            get: prepare("SELECT v FROM strato_kv WHERE k = $1")?,
            get_many: prepare("SELECT k, v FROM strato_kv WHERE k = ANY($1)")?,
            scan: prepare(
                "SELECT k, v FROM strato_kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3",
            )?,
            upsert: prepare(
                "INSERT INTO strato_kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
            )?,
            delete: prepare("DELETE FROM strato_kv WHERE k = ANY($1)")?,
            client,
        })
    }

    /// A connection for one operation: an idle one, a new one, or (when
    /// [`MAX_CONNECTIONS`] are in use) the next one freed.
    fn checkout(&self) -> std::result::Result<Lease<'_>, Fault> {
        let deadline = Instant::now() + CHECKOUT_WAIT;
        let mut st = self.pool.idle.lock();
        loop {
            while let Some(c) = st.idle.pop() {
                if c.client.is_closed() {
                    st.open -= 1;
                    continue;
                }
                return Ok(Lease {
                    meta: self,
                    conn: Some(c),
                    broken: false,
                });
            }
            if st.open < MAX_CONNECTIONS {
                st.open += 1;
                break;
            }
            if self.pool.freed.wait_until(&mut st, deadline).timed_out() {
                return Err(Fault::Lost(format!(
                    "all {MAX_CONNECTIONS} connections stayed busy for {} s",
                    CHECKOUT_WAIT.as_secs()
                )));
            }
        }
        drop(st);
        match self.connect() {
            Ok(c) => Ok(Lease {
                meta: self,
                conn: Some(c),
                broken: false,
            }),
            Err(e) => {
                self.pool.idle.lock().open -= 1;
                self.pool.freed.notify_one();
                Err(e)
            }
        }
    }

    fn unavailable(&self, what: &str, why: &str) -> StoreError {
        StoreError::Unavailable {
            backend: BACKEND,
            message: format!("{what} on {}: {why}", self.shown),
        }
    }

    fn refused(&self, why: &str) -> StoreError {
        StoreError::Meta(format!("PostgreSQL {}: {why}", self.shown))
    }

    /// Run `op` on a connection, reconnecting (bounded, with backoff) while
    /// connections are lost. Only for statements that change nothing.
    fn read<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&Conn) -> std::result::Result<T, Fault>,
    ) -> Result<T> {
        let mut last = String::new();
        for attempt in 0..CONNECTION_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt, Duration::from_millis(100)));
            }
            let mut lease = match self.checkout() {
                Ok(l) => l,
                Err(Fault::Lost(why) | Fault::Conflict(why)) => {
                    last = why;
                    continue;
                }
                Err(Fault::Refused(why)) => return Err(self.refused(&why)),
            };
            match op(lease.conn()) {
                Ok(v) => return Ok(v),
                Err(Fault::Lost(why) | Fault::Conflict(why)) => {
                    lease.broken = true;
                    last = why;
                }
                Err(Fault::Refused(why)) => return Err(self.refused(&why)),
            }
        }
        tracing::warn!(db = %self.shown, "{what} failed after {CONNECTION_ATTEMPTS} attempts: {last}");
        Err(self.unavailable(what, &last))
    }

    /// Bring the schema to [`SCHEMA_VERSION`], or refuse a newer database.
    fn migrate(&self) -> Result<()> {
        let mut last = String::new();
        for attempt in 0..CONNECTION_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(backoff(attempt, Duration::from_millis(100)));
            }
            let outcome = (|| -> std::result::Result<Result<()>, Fault> {
                let client = self.bootstrap_client()?;
                let c = &client;
                self.trip(c.batch_execute("BEGIN"))?;
                // Transaction-scoped: released by COMMIT or ROLLBACK, and by
                // the server if this process dies.
                self.trip(c.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]))?;
                self.trip(c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS strato_schema (version integer NOT NULL)",
                ))?;
                let found: Option<i32> = self
                    .trip(c.query_opt("SELECT max(version) FROM strato_schema", &[]))?
                    .and_then(|r| r.get(0));
                let found = found.unwrap_or(0);
                if found > SCHEMA_VERSION {
                    let _ = self.trip(c.batch_execute("ROLLBACK"));
                    return Ok(Err(StoreError::Meta(format!(
                        "the PostgreSQL database {} has strato schema version {found}, but this \
                         strato knows versions up to {SCHEMA_VERSION}: upgrade strato before \
                         serving this repository",
                        self.shown
                    ))));
                }
                for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
                    tracing::info!(db = %self.shown, from, "applying schema migration");
                    self.trip(c.batch_execute(sql))?;
                }
                if found < SCHEMA_VERSION {
                    self.trip(c.execute("DELETE FROM strato_schema", &[]))?;
                    self.trip(c.execute(
                        "INSERT INTO strato_schema (version) VALUES ($1)",
                        &[&SCHEMA_VERSION],
                    ))?;
                }
                self.trip(c.batch_execute("COMMIT"))?;
                Ok(Ok(()))
            })();
            match outcome {
                Ok(r) => return r,
                // Two frontends creating strato_schema at once: the loser
                // waits on the lock and then finds it, but CREATE ... IF NOT
                // EXISTS outside the lock could still collide; a retry sees it.
                Err(Fault::Lost(why) | Fault::Conflict(why)) => last = why,
                Err(Fault::Refused(why)) => {
                    return Err(self.refused(&format!("applying the schema: {why}")))
                }
            }
        }
        Err(self.unavailable("opening the metadata database", &last))
    }

    /// A plain connection (no prepared statements: the table may not exist
    /// yet), dropped after use.
    fn bootstrap_client(&self) -> std::result::Result<Client, Fault> {
        let rt = self.handle().map_err(|e| Fault::Lost(e.to_string()))?;
        let config = self.config.clone();
        let task = rt.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        match self.wait(task) {
            Ok(Ok(Ok(c))) => Ok(c),
            Ok(Ok(Err(e))) => Err(Fault::of(&e)),
            Ok(Err(join)) => Err(Fault::Lost(format!("connect task failed: {join}"))),
            Err(TimedOut) => Err(Fault::Lost("connect timed out".into())),
        }
    }

    /// One run of a write transaction.
    fn attempt_write(
        &self,
        conn: &Conn,
        f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<()>,
    ) -> Attempt {
        if let Err(fault) = self.trip(
            conn.client
                .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE"),
        ) {
            return Attempt::Fault(fault);
        }
        let mut txn = PgTxn {
            meta: self,
            conn,
            writes: BTreeMap::new(),
            fault: None,
        };
        let result = f(&mut txn);
        let PgTxn { writes, fault, .. } = txn;
        if let Some(fault) = fault {
            // A read failed (f may have swallowed the error); the transaction
            // is void whatever f returned.
            self.rollback(conn);
            return Attempt::Fault(fault);
        }
        if let Err(e) = result {
            self.rollback(conn);
            return Attempt::Closure(e);
        }
        let mut put_k: Vec<&[u8]> = Vec::new();
        let mut put_v: Vec<&[u8]> = Vec::new();
        let mut del_k: Vec<&[u8]> = Vec::new();
        for (k, v) in &writes {
            match v {
                Some(v) => {
                    put_k.push(k);
                    put_v.push(v);
                }
                None => del_k.push(k),
            }
        }
        if !put_k.is_empty() {
            if let Err(fault) = self.trip(conn.client.execute(&conn.upsert, &[&put_k, &put_v])) {
                self.rollback(conn);
                return Attempt::Fault(fault);
            }
        }
        if !del_k.is_empty() {
            if let Err(fault) = self.trip(conn.client.execute(&conn.delete, &[&del_k])) {
                self.rollback(conn);
                return Attempt::Fault(fault);
            }
        }
        match self.trip(conn.client.batch_execute("COMMIT")) {
            Ok(()) => Attempt::Committed,
            // The server answered: it rolled back (a serialization failure is
            // reported at COMMIT for SERIALIZABLE), safe to run again.
            Err(Fault::Conflict(why)) => Attempt::Fault(Fault::Conflict(why)),
            Err(Fault::Refused(why)) => Attempt::Fault(Fault::Refused(why)),
            // No answer: committed or not, we cannot tell.
            Err(Fault::Lost(why)) => Attempt::Unknown(why),
        }
    }

    fn rollback(&self, conn: &Conn) {
        // Best effort: on a dead connection the server rolls back by itself.
        let _ = self.trip(conn.client.batch_execute("ROLLBACK"));
    }
}

enum Attempt {
    Committed,
    /// `f` failed; rolled back.
    Closure(StoreError),
    /// The database failed before COMMIT was sent, or answered COMMIT with an
    /// error; rolled back.
    Fault(Fault),
    /// The connection died while COMMIT was in flight.
    Unknown(String),
}

fn backoff(attempt: u32, base: Duration) -> Duration {
    let exp = base.saturating_mul(1 << attempt.min(5));
    let capped = exp.min(Duration::from_secs(2));
    // Jitter so two frontends retrying the same conflict do not collide again.
    let jitter = rand::random::<f64>() * 0.5 + 0.75;
    capped.mul_f64(jitter)
}

/// A checked-out connection; returns to the pool on drop unless broken.
struct Lease<'a> {
    meta: &'a PostgresMeta,
    conn: Option<Conn>,
    broken: bool,
}

impl Lease<'_> {
    #[allow(clippy::expect_used)]
    fn conn(&self) -> &Conn {
        // Invariant: `conn` is Some until drop.
        self.conn
            .as_ref()
            .expect("lease holds a connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut st = self.meta.pool.idle.lock();
        match self.conn.take() {
            Some(c) if !self.broken && !c.client.is_closed() => st.idle.push(c),
            _ => st.open -= 1,
        }
        drop(st);
        self.meta.pool.freed.notify_one();
    }
}

struct PgTxn<'a> {
    meta: &'a PostgresMeta,
    conn: &'a Conn,
    /// Buffered writes by full key; `None` deletes.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The first database failure inside this run of `f`.
    fault: Option<Fault>,
}

impl MetaTxn for PgTxn<'_> {
    fn get(&mut self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = full_key(t, key);
        if let Some(v) = self.writes.get(&k) {
            return Ok(v.clone());
        }
        if self.fault.is_some() {
            return Err(StoreError::Meta("transaction already failed".into()));
        }
        match self
            .meta
            .trip(self.conn.client.query_opt(&self.conn.get, &[&k]))
        {
            Ok(row) => Ok(row.map(|r| r.get::<_, Vec<u8>>(0))),
            Err(fault) => {
                let err = match &fault {
                    Fault::Lost(why) => self.meta.unavailable("reading metadata", why),
                    Fault::Conflict(why) | Fault::Refused(why) => self.meta.refused(why),
                };
                self.fault = Some(fault);
                Err(err)
            }
        }
    }
    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.writes.insert(full_key(t, key), Some(value.to_vec()));
        Ok(())
    }
    fn delete(&mut self, t: Table, key: &[u8]) -> Result<()> {
        self.writes.insert(full_key(t, key), None);
        Ok(())
    }
}

/// The first key after every key that starts with `prefix`. `prefix` starts
/// with a table byte below 0xff, so there always is one.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

impl MetaStore for PostgresMeta {
    fn engine(&self) -> &'static str {
        BACKEND
    }

    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = full_key(t, key);
        self.read("reading metadata", |c| {
            self.trip(c.client.query_opt(&c.get, &[&k]))
                .map(|row| row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn get_many(&self, t: Table, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<Vec<u8>> = keys.iter().map(|k| full_key(t, k)).collect();
        let rows = self.read("reading metadata", |c| {
            self.trip(c.client.query(&c.get_many, &[&full]))
        })?;
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = rows
            .into_iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
            .collect();
        // Keys may repeat; each position gets its own copy.
        Ok(full.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn scan(&self, t: Table, prefix: &[u8], start: &[u8], limit: usize) -> Result<Vec<KeyValue>> {
        let full_prefix = full_key(t, prefix);
        let from = full_key(t, start.max(prefix));
        let end = prefix_end(&full_prefix);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read("scanning metadata", |c| {
            self.trip(c.client.query(&c.scan, &[&from, &end, &limit]))
        })?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let k: Vec<u8> = r.get(0);
                (k[1..].to_vec(), r.get::<_, Vec<u8>>(1))
            })
            .collect())
    }

    fn write(&self, f: &mut dyn FnMut(&mut dyn MetaTxn) -> Result<()>) -> Result<()> {
        let _serial = self.write_lock.lock();
        let mut lost = 0u32;
        let mut conflicts = 0u32;
        loop {
            let mut lease = match self.checkout() {
                Ok(l) => l,
                Err(Fault::Lost(why) | Fault::Conflict(why)) => {
                    lost += 1;
                    if lost >= CONNECTION_ATTEMPTS {
                        return Err(self.unavailable("writing metadata", &why));
                    }
                    std::thread::sleep(backoff(lost, Duration::from_millis(100)));
                    continue;
                }
                Err(Fault::Refused(why)) => return Err(self.refused(&why)),
            };
            match self.attempt_write(lease.conn(), f) {
                Attempt::Committed => return Ok(()),
                Attempt::Closure(e) => return Err(e),
                Attempt::Fault(Fault::Refused(why)) => return Err(self.refused(&why)),
                Attempt::Fault(Fault::Conflict(why)) => {
                    conflicts += 1;
                    if conflicts >= CONFLICT_ATTEMPTS {
                        return Err(self.refused(&format!(
                            "write transaction still conflicting after {conflicts} attempts: {why}"
                        )));
                    }
                    tracing::debug!(db = %self.shown, conflicts, "serialization conflict, retrying");
                    std::thread::sleep(backoff(conflicts, Duration::from_millis(5)));
                }
                Attempt::Fault(Fault::Lost(why)) => {
                    // Rolled back by the server (COMMIT was never sent):
                    // running f again on a new connection is safe.
                    lease.broken = true;
                    lost += 1;
                    if lost >= CONNECTION_ATTEMPTS {
                        return Err(self.unavailable("writing metadata", &why));
                    }
                    drop(lease);
                    std::thread::sleep(backoff(lost, Duration::from_millis(100)));
                }
                Attempt::Unknown(why) => {
                    lease.broken = true;
                    tracing::error!(db = %self.shown, "connection lost during COMMIT: {why}");
                    return Err(self.unavailable(
                        "committing metadata",
                        &format!(
                            "the connection was lost during COMMIT, so the change may or may \
                             not have been applied; it was not acknowledged ({why})"
                        ),
                    ));
                }
            }
        }
    }

    fn check_format(&self, format: &str) -> Result<()> {
        check_format_marker(self, format, &self.shown)
    }
}

/// The store's format marker in `Table::Misc`, written by the first frontend
/// and checked by every later one (the data directory's FORMAT file describes
/// only that frontend's local files).
fn check_format_marker(meta: &dyn MetaStore, format: &str, shown: &str) -> Result<()> {
    const KEY: &[u8] = b"format";
    let mut found = None;
    meta.write(&mut |tx| {
        found = tx.get(Table::Misc, KEY)?;
        if found.is_none() {
            tx.put(Table::Misc, KEY, format.as_bytes())?;
        }
        Ok(())
    })?;
    match found {
        Some(v) if v != format.as_bytes() => Err(StoreError::Meta(format!(
            "the repository in {shown} has format {:?}, this strato understands {format:?}",
            String::from_utf8_lossy(&v)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::meta::tests::fresh_url;
    use crate::meta::Engine;

    fn url() -> String {
        fresh_url(Engine::Postgres).unwrap()
    }

    /// Run `sql` on a connection of its own (outside the pool).
    fn sql(m: &PostgresMeta, sql: &str) {
        let c = m.bootstrap_client().unwrap();
        m.trip(c.batch_execute(sql)).unwrap();
    }

    /// Disconnect every other session of this database, as a server restart
    /// or a network cut would.
    fn cut_connections(m: &PostgresMeta) {
        sql(
            m,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        );
    }

    #[test]
    fn redaction_never_shows_the_password() {
        let shown = redact_url("postgres://strato:s3cret@127.0.0.1:5433/meta?sslmode=disable");
        assert_eq!(shown, "postgres://strato@127.0.0.1:5433/meta");
        let kv = redact_url("host=localhost port=5432 user=u password=hunter2 dbname=d");
        assert!(!kv.contains("hunter2"), "{kv}");
        assert_eq!(kv, "postgres://u@localhost:5432/d");
        assert!(!redact_url("postgres://u:pw@[::1").contains("pw"));
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"o"), b"p".to_vec());
        assert_eq!(prefix_end(b"ob\0"), b"ob\x01".to_vec());
        assert_eq!(prefix_end(b"o\xff\xff"), b"p".to_vec());
    }

    #[test]
    fn a_schema_from_the_future_is_refused() {
        let url = url();
        let m = PostgresMeta::open(&url).unwrap();
        m.write(&mut |tx| tx.put(Table::Misc, b"k", b"v")).unwrap();
        sql(&m, "UPDATE strato_schema SET version = 99");
        drop(m);
        let err = PostgresMeta::open(&url).err().expect("must refuse");
        let text = err.to_string();
        assert!(
            text.contains("schema version 99") && text.contains("upgrade strato"),
            "{text}"
        );
        assert!(!text.contains(strato_testbed::shared_postgres().password()));
    }

    #[test]
    fn frontends_starting_together_migrate_once() {
        let url = url();
        let opened: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| PostgresMeta::open(&url)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for m in &opened {
            assert!(m.is_ok(), "{:?}", m.as_ref().err());
        }
        let m = opened.into_iter().next().unwrap().unwrap();
        let c = m.bootstrap_client().unwrap();
        let rows = m
            .trip(c.query("SELECT version FROM strato_schema", &[]))
            .unwrap();
        let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(versions, vec![SCHEMA_VERSION]);
    }

    #[test]
    fn two_frontends_incrementing_one_counter_lose_nothing() {
        let url = url();
        // Two stores over one database: their write locks are separate, so
        // their transactions really conflict and SERIALIZABLE retries.
        let a = Arc::new(PostgresMeta::open(&url).unwrap());
        let b = Arc::new(PostgresMeta::open(&url).unwrap());
        let runs = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for i in 0..4 {
                let m = if i % 2 == 0 { a.clone() } else { b.clone() };
                let runs = runs.clone();
                s.spawn(move || {
                    for _ in 0..25 {
                        m.write(&mut |tx| {
                            runs.fetch_add(1, Ordering::Relaxed);
                            let n = tx
                                .get(Table::Misc, b"counter")?
                                .map(|v| u32::from_be_bytes(v.try_into().unwrap()))
                                .unwrap_or(0);
                            tx.put(Table::Misc, b"counter", &(n + 1).to_be_bytes())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let v = a.get(Table::Misc, b"counter").unwrap().unwrap();
        assert_eq!(u32::from_be_bytes(v.try_into().unwrap()), 100);
        eprintln!("100 increments took {} runs", runs.load(Ordering::Relaxed));
    }

    #[test]
    fn callable_from_plain_threads_and_from_inside_tokio() {
        let m = Arc::new(PostgresMeta::open(&url()).unwrap());
        m.write(&mut |tx| tx.put(Table::Misc, b"k", b"v")).unwrap();
        // Inside a task of a multi-threaded runtime (as the S3 handlers are).
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let m2 = m.clone();
        let got = rt
            .block_on(async move {
                tokio::spawn(async move {
                    m2.write(&mut |tx| tx.put(Table::Misc, b"t", b"task"))?;
                    m2.get(Table::Misc, b"k")
                })
                .await
            })
            .unwrap()
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
        // From a spawn_blocking pool.
        let m3 = m.clone();
        let got = rt
            .block_on(rt.spawn_blocking(move || m3.scan(Table::Misc, b"", b"", 10)))
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2);
        // On a current-thread runtime, straight from async code; and the
        // last handle dropped there (dropping a runtime in an async context
        // would panic).
        let ct = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let m4 = Arc::into_inner(m).unwrap();
        ct.block_on(async move {
            assert_eq!(
                m4.get(Table::Misc, b"t").unwrap().as_deref(),
                Some(&b"task"[..])
            );
            drop(m4);
        });
    }

    #[test]
    fn cut_connections_are_reopened_and_writes_rerun_only_before_commit() {
        let m = PostgresMeta::open(&url()).unwrap();
        m.write(&mut |tx| tx.put(Table::Misc, b"k", b"v1")).unwrap();
        // Reads: every pooled connection is dead, the read reconnects.
        cut_connections(&m);
        assert_eq!(
            m.get(Table::Misc, b"k").unwrap().as_deref(),
            Some(&b"v1"[..])
        );
        // A connection lost before COMMIT was sent: rolled back by the
        // server, so the closure runs again and the write lands once.
        let mut runs = 0;
        m.write(&mut |tx| {
            runs += 1;
            let old = tx.get(Table::Misc, b"k")?;
            if runs == 1 {
                cut_connections(&m);
                std::thread::sleep(Duration::from_millis(200));
            }
            let mut v = old.unwrap_or_default();
            v.extend_from_slice(b"+");
            tx.put(Table::Misc, b"k", &v)
        })
        .unwrap();
        assert_eq!(runs, 2);
        assert_eq!(
            m.get(Table::Misc, b"k").unwrap().as_deref(),
            Some(&b"v1+"[..])
        );
    }

    #[test]
    fn a_connection_lost_during_commit_is_an_error_not_a_rerun() {
        let m = PostgresMeta::open(&url()).unwrap();
        let mut runs = 0;
        // No writes, so nothing is sent between the closure and COMMIT:
        // COMMIT is the first statement to meet the dead connection.
        let r = m.write(&mut |tx| {
            runs += 1;
            tx.get(Table::Misc, b"k")?;
            cut_connections(&m);
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        });
        assert_eq!(
            runs, 1,
            "an unknown COMMIT outcome must not rerun the closure"
        );
        match r {
            Err(StoreError::Unavailable { backend, message }) => {
                assert_eq!(backend, "postgres");
                assert!(message.contains("COMMIT"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        // And the next write works on a fresh connection.
        m.write(&mut |tx| tx.put(Table::Misc, b"k", b"v")).unwrap();
    }

    #[test]
    fn a_stopped_server_gives_unavailable_then_recovers() {
        // Its own server: stopping the shared one would fail other tests.
        let pg = strato_testbed::Postgres::start().unwrap();
        let url = pg.create_database("down");
        let m = PostgresMeta::open(&url).unwrap();
        m.write(&mut |tx| tx.put(Table::Objects, b"acked", b"1"))
            .unwrap();
        pg.stop();
        let t0 = Instant::now();
        match m.get(Table::Objects, b"acked") {
            Err(StoreError::Unavailable { backend, message }) => {
                assert_eq!(backend, "postgres");
                assert!(!message.contains(pg.password()), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let r = m.write(&mut |tx| tx.put(Table::Objects, b"refused", b"2"));
        assert!(matches!(r, Err(StoreError::Unavailable { .. })), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
        pg.start_again();
        assert_eq!(
            m.get(Table::Objects, b"acked").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(m.get(Table::Objects, b"refused").unwrap(), None);
        m.write(&mut |tx| tx.put(Table::Objects, b"after", b"3"))
            .unwrap();
        // A crash (SIGKILL) loses nothing acknowledged either.
        pg.kill9();
        pg.start_again();
        assert_eq!(
            m.get(Table::Objects, b"after").unwrap().as_deref(),
            Some(&b"3"[..])
        );
    }
}
