//! Child daemons that cannot outlive the test process, and small helpers.
//!
//! Each testbed instance owns a temporary directory and one watchdog: a
//! `sh` loop, in its own process group (so a Ctrl-C to the test's group does
//! not kill it before it has cleaned up), that polls the test process every
//! 0.5 s. When the test process is gone, or the directory was removed by a
//! normal `Drop`, it signals every daemon listed in `DIR/pids/`, waits a
//! bounded time, kills what is left with SIGKILL and removes the directory.
//! Daemons are direct children of the test process (so `stop`/`kill9` act
//! on a known PID); their pid files are written before `spawn` returns to
//! the caller and removed once they have been reaped.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::TestbedError;

/// The watchdog. `$1` = PID of the test process, `$2` = the instance's
/// directory. The loop is bounded (48 h) like every loop in the tests.
const WATCHDOG: &str = r#"
trap '' INT HUP TERM
parent=$1; dir=$2; n=0
while [ $n -lt 345600 ] && [ -d "$dir/pids" ] && kill -0 "$parent" 2>/dev/null; do
  sleep 0.5; n=$((n+1))
done
signal_all() {
  for f in "$dir"/pids/*; do
    [ -f "$f" ] || continue
    read -r sig pid < "$f" || continue
    kill -"$1$sig" "$pid" 2>/dev/null
  done
}
alive() {
  for f in "$dir"/pids/*; do
    [ -f "$f" ] || continue
    read -r sig pid < "$f" || continue
    kill -0 "$pid" 2>/dev/null && return 0
  done
  return 1
}
if [ -d "$dir/pids" ]; then
  signal_all ""
  i=0
  while [ $i -lt 20 ] && alive; do sleep 0.25; i=$((i+1)); done
  for f in "$dir"/pids/*; do
    [ -f "$f" ] || continue
    read -r sig pid < "$f" || continue
    kill -KILL "$pid" 2>/dev/null
  done
fi
rm -rf "$dir"
"#;

/// An instance's directory and its watchdog. Dropping it kills the
/// registered daemons (the caller should have stopped them already) and
/// removes the directory.
pub(crate) struct Guard {
    dir: PathBuf,
    watchdog: Child,
}

impl Guard {
    /// A fresh directory under the system temp dir, named after `prefix`.
    pub(crate) fn new(prefix: &str) -> Result<Guard, TestbedError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(TestbedError::io("creating the testbed's temp dir"))?
            .keep();
        let pids = dir.join("pids");
        std::fs::create_dir(&pids)
            .map_err(TestbedError::io(format!("creating {}", pids.display())))?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("strato-testbed-watchdog")
            .arg(std::process::id().to_string())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let watchdog = match watchdog {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(TestbedError::Io {
                    what: "starting the watchdog shell (sh)".into(),
                    source: e,
                });
            }
        };
        Ok(Guard { dir, watchdog })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start `cmd` as a daemon named `name` (log in `DIR/NAME.log`); the
    /// watchdog sends it `graceful` (a signal name such as `TERM`), then
    /// SIGKILL, if the test process dies.
    pub(crate) fn spawn(
        &self,
        name: &str,
        mut cmd: Command,
        graceful: &'static str,
    ) -> Result<Daemon, TestbedError> {
        let log_path = self.log_path(name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(TestbedError::io(format!("opening {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(TestbedError::io("duplicating a log file handle"))?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let child = cmd.spawn().map_err(TestbedError::io(format!(
            "starting {name} ({:?})",
            cmd.get_program()
        )))?;
        let pid_file = self.dir.join("pids").join(name);
        let mut daemon = Daemon {
            name: name.to_string(),
            child,
            pid_file,
            log_path,
        };
        // Written after spawn, so a test process killed in between (a window
        // of microseconds) would leave this one daemon unguarded.
        let written = File::create(&daemon.pid_file)
            .and_then(|mut f| writeln!(f, "{} {}", graceful, daemon.child.id()));
        if let Err(e) = written {
            daemon.kill9();
            return Err(TestbedError::Io {
                what: format!("writing {}", daemon.pid_file.display()),
                source: e,
            });
        }
        Ok(daemon)
    }

    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Removing pids/ first tells the watchdog to stop polling; it then
        // removes the rest itself. Do it here too so that Drop is
        // synchronous for the caller.
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// A running daemon, child of this process.
pub(crate) struct Daemon {
    name: String,
    child: Child,
    pid_file: PathBuf,
    log_path: PathBuf,
}

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `Some(status)` if the daemon has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// Send `signal` (a name such as `TERM`), wait up to `grace`, then
    /// SIGKILL.
    pub(crate) fn stop(mut self, signal: &str, grace: Duration) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if sent.is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if self.exited().is_some() {
                    self.forget();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!(daemon = %self.name, "did not stop in {grace:?}; killing it");
        }
        self.kill9();
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget();
    }

    fn forget(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Find `name` on PATH or in the sbin directories.
pub(crate) fn find_tool(name: &str, package: &'static str) -> Result<PathBuf, TestbedError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(sbin.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| TestbedError::MissingTool {
            tool: name.to_string(),
            package,
        })
}

/// A TCP port on 127.0.0.1 that was free a moment ago. The daemon binds it
/// later, so another process may take it first: callers retry on a bind
/// error.
pub(crate) fn free_port() -> Result<u16, TestbedError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(TestbedError::io("binding 127.0.0.1:0 to find a free port"))?;
    let port = l
        .local_addr()
        .map_err(TestbedError::io("reading a bound socket's address"))?
        .port();
    Ok(port)
}

/// Run a setup command to completion; its output becomes the error.
pub(crate) fn run(what: &str, cmd: &mut Command) -> Result<String, TestbedError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(TestbedError::io(format!(
            "running {what} ({:?})",
            cmd.get_program()
        )))?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            what: what.to_string(),
            output: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Poll `ready` every `every` until it says yes or `limit` has passed.
pub(crate) fn wait_until(
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Result<bool, TestbedError>,
) -> Result<bool, TestbedError> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(every);
    }
}

/// A random alphanumeric string, for role names and passwords.
pub(crate) fn random_token(len: usize) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric
        .sample_string(&mut rand::thread_rng(), len)
        .to_lowercase()
}

/// The effective uid of this process (owner of /proc/self), without libc.
pub(crate) fn euid() -> Result<u32, TestbedError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(TestbedError::io("reading /proc/self to learn our uid"))
}

/// uid and gid of a system user, from /etc/passwd.
pub(crate) fn system_user(name: &str) -> Result<(u32, u32), TestbedError> {
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(TestbedError::io("reading /etc/passwd"))?;
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .next()
        .ok_or_else(|| TestbedError::Invalid {
            what: "system user",
            detail: format!("no user {name:?} in /etc/passwd (the postgresql package creates it)"),
        })
}
