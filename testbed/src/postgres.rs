//! A throwaway PostgreSQL server: initdb into a temp dir, `postgres` in the
//! foreground on 127.0.0.1 and a unix socket in the same dir.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::error::TestbedError;
use crate::guard::{self, Daemon, Guard};

const PACKAGE: &str = "postgresql";

/// How long a start may take before it counts as failed (initdb + start is
/// about 1 s on the test machines).
const START_LIMIT: Duration = Duration::from_secs(30);

/// A PostgreSQL server for tests. The superuser is a generated role with a
/// generated password; TCP clients must authenticate with SCRAM-SHA-256.
///
/// Tests that [`stop`](Self::stop), [`kill9`](Self::kill9) or restart the
/// server should start their own instance with [`Postgres::start`] rather
/// than use [`shared_postgres`], which other tests in the binary share.
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    user: String,
    password: String,
    /// Some((uid, gid)) of the `postgres` user when we run as root:
    /// PostgreSQL refuses to run as root.
    run_as: Option<(u32, u32)>,
    daemon: Mutex<Option<Daemon>>,
    // Last: dropped after the daemon is stopped.
    guard: Guard,
}

impl Postgres {
    /// initdb a fresh cluster and start it on a free loopback port.
    pub fn start() -> Result<Postgres, TestbedError> {
        let t0 = Instant::now();
        let bin = bin_dir()?;
        let run_as = if guard::euid()? == 0 {
            Some(guard::system_user("postgres")?)
        } else {
            None
        };
        let guard = Guard::new("strato-pg-")?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(guard.dir(), Some(uid), Some(gid))
                .map_err(TestbedError::io("giving the temp dir to the postgres user"))?;
        }
        let user = format!("strato_{}", guard::random_token(8));
        let password = guard::random_token(24);
        let pg = Postgres {
            bin,
            port: 0,
            user,
            password,
            run_as,
            daemon: Mutex::new(None),
            guard,
        };
        pg.initdb()?;
        // The port was free when we looked; if another process took it
        // before postgres bound it, try another one.
        let mut pg = pg;
        let mut last = None;
        for _ in 0..5 {
            pg.port = guard::free_port()?;
            match pg.launch() {
                Ok(()) => {
                    tracing::info!(port = pg.port, elapsed = ?t0.elapsed(), "postgres testbed up");
                    return Ok(pg);
                }
                Err(e) if bind_failed(&pg.log_path()) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| TestbedError::daemon("postgres never bound a port", &pg.log_path())))
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// Create database `name` (letters, digits, `_`; one per test keeps
    /// tests apart) and return its URL. Panics on failure: see
    /// [`try_create_database`](Self::try_create_database).
    pub fn create_database(&self, name: &str) -> String {
        match self.try_create_database(name) {
            Ok(url) => url,
            Err(e) => panic!("creating database {name:?} on the PostgreSQL testbed: {e}"),
        }
    }

    pub fn try_create_database(&self, name: &str) -> Result<String, TestbedError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(TestbedError::Invalid {
                what: "database name",
                detail: format!(
                    "{name:?}: use 1-63 ASCII letters, digits and '_', not starting with a digit"
                ),
            });
        }
        self.psql(&format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url_for(name))
    }

    /// Run one SQL statement as the superuser over the unix socket.
    pub fn psql(&self, sql: &str) -> Result<String, TestbedError> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.arg("-X")
            .args(["-v", "ON_ERROR_STOP=1", "-qAt"])
            .arg("-h")
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                "-d",
                "postgres",
                "-c",
                sql,
            ]);
        guard::run(&format!("psql -c {sql:?}"), &mut cmd)
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's data directory (PGDATA).
    pub fn data_dir(&self) -> PathBuf {
        self.guard.dir().join("data")
    }

    /// The server's log (stderr), appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.guard.log_path("postgres")
    }

    /// PID of the running postmaster, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon().as_ref().map(Daemon::pid)
    }

    /// Fast shutdown (SIGINT: sessions are disconnected, committed work is
    /// on disk); waits for it. A stopped server stays stopped.
    pub fn stop(&self) {
        if let Some(d) = self.daemon().take() {
            d.stop("INT", Duration::from_secs(30));
        }
    }

    /// SIGKILL the postmaster: a crash. Its backends notice and exit on
    /// their own; [`start_again`](Self::start_again) runs crash recovery.
    pub fn kill9(&self) {
        if let Some(mut d) = self.daemon().take() {
            d.kill9();
        }
    }

    /// Start the stopped (or killed) server again: same data, same port.
    /// Panics on failure: see [`try_start_again`](Self::try_start_again).
    pub fn start_again(&self) {
        if let Err(e) = self.try_start_again() {
            panic!("restarting the PostgreSQL testbed: {e}");
        }
    }

    pub fn try_start_again(&self) -> Result<(), TestbedError> {
        if self.daemon().is_some() {
            return Ok(());
        }
        // After kill9, backends that were busy may hold the shared memory
        // (and so the data dir) a little longer: retry for a while.
        let deadline = Instant::now() + START_LIMIT;
        loop {
            match self.launch() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{db}",
            self.user, self.password, self.port
        )
    }

    fn socket_dir(&self) -> PathBuf {
        self.guard.dir().to_path_buf()
    }

    fn daemon(&self) -> MutexGuard<'_, Option<Daemon>> {
        self.daemon
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.guard.dir())
            .env("HOME", self.guard.dir())
            .env("LC_ALL", "C.UTF-8")
            .env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self) -> Result<(), TestbedError> {
        let pwfile = self.guard.dir().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", self.password))
            .map_err(TestbedError::io("writing initdb's password file"))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .map_err(TestbedError::io("giving the password file to postgres"))?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-U", &self.user])
            .arg(format!("--pwfile={}", pwfile.display()))
            // Local (unix socket) connections are the testbed's own
            // administration; TCP clients, i.e. the code under test, use
            // the password.
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .args(["--encoding=UTF8", "--locale=C"])
            // Only skips initdb's final sync of the new files: a test
            // machine that loses power loses its tests anyway. fsync stays
            // on in the server.
            .arg("--no-sync");
        let result = guard::run("initdb", &mut cmd);
        let _ = std::fs::remove_file(&pwfile);
        result.map(|_| ())
    }

    /// Start the postmaster and wait until it accepts connections.
    fn launch(&self) -> Result<(), TestbedError> {
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-h", "127.0.0.1"])
            .arg("-k")
            .arg(self.socket_dir());
        for setting in [
            // Durability tests kill the server and count on committed rows.
            "fsync=on",
            "synchronous_commit=on",
            "full_page_writes=on",
            "password_encryption=scram-sha-256",
            // Many `strato serve` frontends, each with a pool.
            "max_connections=300",
            "shared_buffers=32MB",
            "logging_collector=off",
            // Crash recovery (after kill9) first syncs the data directory;
            // one syncfs instead of an fsync per file saves seconds.
            "recovery_init_sync_method=syncfs",
        ] {
            cmd.args(["-c", setting]);
        }
        // SIGQUIT (immediate shutdown) when the watchdog cleans up: the
        // postmaster still removes its shared memory then.
        let mut daemon = self.guard.spawn("postgres", cmd, "QUIT")?;
        let isready = self.bin.join("pg_isready");
        let port = self.port.to_string();
        let mut exited = None;
        let ready = guard::wait_until(START_LIMIT, Duration::from_millis(50), || {
            if let Some(status) = daemon.exited() {
                exited = Some(status);
                return Ok(true);
            }
            let st = Command::new(&isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-t", "1"])
                .status()
                .map_err(TestbedError::io("running pg_isready"))?;
            Ok(st.success())
        })?;
        if let Some(status) = exited {
            daemon.kill9();
            return Err(TestbedError::daemon(
                format!("postgres exited at start ({status})"),
                daemon.log_path(),
            ));
        }
        if !ready {
            let log = daemon.log_path().to_path_buf();
            daemon.kill9();
            return Err(TestbedError::daemon(
                format!("postgres not ready after {START_LIMIT:?}"),
                &log,
            ));
        }
        *self.daemon() = Some(daemon);
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(d) = self.daemon().take() {
            // Immediate shutdown: nothing to keep.
            d.stop("QUIT", Duration::from_secs(5));
        }
    }
}

/// The PostgreSQL server shared by the tests of one test binary, started on
/// first use. Panics (naming the missing tool, if that is why) when it
/// cannot start: tests that need PostgreSQL fail, never skip.
pub fn shared_postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let t0 = Instant::now();
        match Postgres::start() {
            Ok(pg) => {
                eprintln!(
                    "strato-testbed: PostgreSQL on 127.0.0.1:{} started in {:.2} s",
                    pg.port,
                    t0.elapsed().as_secs_f64()
                );
                pg
            }
            Err(e) => panic!("cannot start the PostgreSQL testbed: {e}"),
        }
    })
}

/// The server binaries: `$STRATO_PG_BIN` or the newest
/// /usr/lib/postgresql/N/bin (Debian's layout; initdb is not on PATH there).
fn bin_dir() -> Result<PathBuf, TestbedError> {
    let missing = || TestbedError::MissingTool {
        tool: "initdb (/usr/lib/postgresql/*/bin)".into(),
        package: PACKAGE,
    };
    if let Some(dir) = std::env::var_os("STRATO_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(missing())
        };
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let Some(v) = e.file_name().to_str().and_then(|v| v.parse::<u32>().ok()) else {
                continue;
            };
            let bin = e.path().join("bin");
            let complete = ["initdb", "postgres", "pg_isready", "psql"]
                .iter()
                .all(|t| bin.join(t).is_file());
            if complete && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, p)| p).ok_or_else(missing)
}

fn bind_failed(log: &Path) -> bool {
    let tail = crate::error::log_tail(log, 20);
    tail.contains("could not bind") || tail.contains("Address already in use")
}
