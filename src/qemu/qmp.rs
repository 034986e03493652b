//! A small QMP (QEMU Machine Protocol) client over a unix socket: the
//! greeting and capability negotiation, commands with their replies matched
//! by id, asynchronous events kept aside, every wait bounded by a timeout.
//! Used by `strato vm save`, by the migration reports (QEMU's own downtime
//! from `query-migrate`) and by the tests that drive real guests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// QMP messages are single JSON lines; QEMU's largest replies (e.g.
/// `query-qmp-schema`) stay well below this, so a longer line is a broken peer.
const MAX_LINE: u64 = 16 << 20;

/// Causes are part of each message (and not chained as `source` as well,
/// which would print them twice at the CLI).
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {}: {cause}", path.display())]
    Connect { path: PathBuf, cause: IoCause },
    #[error("QMP I/O: {0}")]
    Io(IoCause),
    #[error("QMP: timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    #[error("QMP: QEMU closed the connection")]
    Closed,
    #[error("QMP: message longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("QMP: not JSON: {0}")]
    Json(String),
    #[error("QMP: unexpected message: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("migration {status}: {desc}")]
    Migration { status: String, desc: String },
}

/// An I/O error carried in a message, not as a chained source.
#[derive(Debug)]
pub struct IoCause(pub std::io::Error);

impl std::fmt::Display for IoCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<std::io::Error> for QmpError {
    fn from(e: std::io::Error) -> Self {
        QmpError::Io(IoCause(e))
    }
}

impl From<serde_json::Error> for QmpError {
    fn from(e: serde_json::Error) -> Self {
        QmpError::Json(e.to_string())
    }
}

impl QmpError {
    /// QEMU went away (exited, or closed the socket) rather than answering.
    pub fn is_disconnect(&self) -> bool {
        match self {
            QmpError::Closed => true,
            QmpError::Io(IoCause(e)) => matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// The parts of `query-migrate` that reports and tests read. QEMU's names
/// are kept (kebab-case); times are milliseconds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// none, setup, active, completed, failed, cancelled, ...
    #[serde(default)]
    pub status: String,
    /// Guest stop time of a completed migration (ms); an estimate while active.
    pub downtime: Option<u64>,
    pub expected_downtime: Option<u64>,
    pub total_time: Option<u64>,
    pub setup_time: Option<u64>,
    pub ram: Option<RamStats>,
    pub error_desc: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamStats {
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub remaining: u64,
    /// Zero pages, sent as a flag only.
    #[serde(default)]
    pub duplicate: u64,
    /// Pages sent in full.
    #[serde(default)]
    pub normal: u64,
    #[serde(default)]
    pub normal_bytes: u64,
    #[serde(default)]
    pub dirty_sync_count: u64,
    #[serde(default)]
    pub page_size: u64,
}

impl MigrationInfo {
    /// No further progress will happen: completed, failed or cancelled.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

pub struct QmpClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: Vec<Value>,
    next_id: u64,
    timeout: Duration,
}

impl QmpClient {
    /// Connect, read the greeting and leave negotiation mode. `timeout`
    /// bounds this and, later, each command.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout {
                what: format!("connecting to {}", path.display()),
                timeout,
            })?
            .map_err(|e| QmpError::Connect {
                path: path.to_path_buf(),
                cause: IoCause(e),
            })?;
        let (r, w) = stream.into_split();
        let mut client = QmpClient {
            reader: BufReader::new(r),
            writer: w,
            events: Vec::new(),
            next_id: 1,
            timeout,
        };
        let greeting = client.read_message("the QMP greeting").await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("no QMP greeting: {greeting}")));
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Like `connect`, but waits (bounded by `within`) for QEMU to create the
    /// socket: right after spawning QEMU it may not exist yet.
    pub async fn connect_when_ready(
        path: &Path,
        within: Duration,
        timeout: Duration,
    ) -> Result<QmpClient, QmpError> {
        let start = Instant::now();
        loop {
            match Self::connect(path, timeout).await {
                Ok(c) => return Ok(c),
                Err(QmpError::Connect { cause, .. })
                    if start.elapsed() < within
                        && matches!(
                            cause.0.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Run one command; returns its `return` value. Events that arrive in
    /// between are kept for `take_events`/`wait_event`.
    pub async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg)?;
        line.push(b'\n');
        self.writer.write_all(&line).await?;
        let what = format!("the reply to {command}");
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self.read_message_within(&what, left).await?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Protocol(format!(
                    "reply for another command: {reply}"
                )));
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(QmpError::Protocol(format!("reply without return: {reply}")));
        }
    }

    /// Events received so far (each the whole JSON message), oldest first.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// Wait for an event by name (e.g. "STOP", "MIGRATION"); one already
    /// received counts. Other events stay kept.
    pub async fn wait_event(&mut self, name: &str, within: Duration) -> Result<Value, QmpError> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return Ok(self.events.remove(i));
        }
        let what = format!("event {name}");
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.read_message_within(&what, left).await?;
            if msg["event"] == name {
                return Ok(msg);
            }
            if msg.get("event").is_some() {
                self.events.push(msg);
            } else {
                return Err(QmpError::Protocol(format!("unsolicited reply: {msg}")));
            }
        }
    }

    /// `query-status`'s status: "running", "paused", "inmigrate", "postmigrate", ...
    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status without status: {v}")))
    }

    pub async fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        let v = self.execute("query-migrate", None).await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Turn migration capabilities on or off (`migrate-set-capabilities`).
    pub async fn set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .await?;
        Ok(())
    }

    /// Start an outgoing migration to `uri` (e.g. "unix:/path", "exec:cmd",
    /// "file:/path"); returns at once, see `wait_migration`.
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .await
            .map(|_| ())
    }

    /// Poll `query-migrate` every `poll` until it finishes, at most `within`.
    /// A failed or cancelled migration is an error carrying QEMU's reason.
    pub async fn wait_migration(
        &mut self,
        poll: Duration,
        within: Duration,
    ) -> Result<MigrationInfo, QmpError> {
        let deadline = Instant::now() + within;
        loop {
            let info = self.query_migrate().await?;
            if info.status == "completed" {
                return Ok(info);
            }
            if info.is_finished() {
                return Err(QmpError::Migration {
                    status: info.status.clone(),
                    desc: info.error_desc.clone().unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                return Err(QmpError::Timeout {
                    what: format!("migration to finish (last status {})", info.status),
                    timeout: within,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    async fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        self.read_message_within(what, self.timeout).await
    }

    async fn read_message_within(
        &mut self,
        what: &str,
        within: Duration,
    ) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let read = async {
            loop {
                line.clear();
                let n = (&mut self.reader)
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut line)
                    .await?;
                if n == 0 {
                    return Err(QmpError::Closed);
                }
                if line.last() != Some(&b'\n') && n as u64 >= MAX_LINE {
                    return Err(QmpError::LineTooLong);
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(serde_json::from_slice::<Value>(&line)?);
            }
        };
        tokio::time::timeout(within, read)
            .await
            .map_err(|_| QmpError::Timeout {
                what: what.to_string(),
                timeout: within,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: greeting, then answers each command in turn,
    /// with an event before the second reply.
    async fn fake_qemu(listener: UnixListener, replies: Vec<Value>) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        for (i, reply) in replies.into_iter().enumerate() {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let cmd: Value = serde_json::from_str(&line).unwrap();
            if i == 1 {
                w.write_all(b"{\"event\": \"STOP\", \"timestamp\": {}}\r\n")
                    .await
                    .unwrap();
            }
            let mut out = reply;
            out["id"] = cmd["id"].clone();
            w.write_all(format!("{out}\r\n").as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn commands_events_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_qemu(
            listener,
            vec![
                json!({"return": {}}),
                json!({"return": {"status": "completed", "downtime": 12, "ram": {"transferred": 5, "normal": 1}}}),
                json!({"error": {"class": "GenericError", "desc": "no such thing"}}),
            ],
        ));
        let mut c = QmpClient::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let info = c.query_migrate().await.unwrap();
        assert_eq!(info.status, "completed");
        assert_eq!(info.downtime, Some(12));
        assert_eq!(info.ram.unwrap().transferred, 5);
        let err = c.execute("bogus", None).await.unwrap_err();
        assert!(
            matches!(&err, QmpError::Command { desc, .. } if desc == "no such thing"),
            "{err}"
        );
        let ev = c.wait_event("STOP", Duration::from_secs(1)).await.unwrap();
        assert_eq!(ev["event"], "STOP");
        // The peer is gone now: reads report it instead of hanging.
        server.await.unwrap();
        let err = c.execute("query-status", None).await.unwrap_err();
        assert!(err.is_disconnect(), "{err}");
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err = QmpClient::connect(&path, Duration::from_millis(200))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    }
}
