use std::path::{Path, PathBuf};

/// Why a testbed daemon could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// A program the testbed runs is not installed.
    #[error("required tool {tool:?} is not installed (Debian package {package}): run scripts/test.sh, which installs it")]
    MissingTool { tool: String, package: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A setup command ran and failed; `output` is its stderr/stdout.
    #[error("{what} failed: {output}")]
    Command { what: String, output: String },
    /// A daemon did not come up in time or exited; `log` is the tail of its log.
    #[error("{what} (log {path}):\n{log}", path = log_path.display())]
    Daemon {
        what: String,
        log_path: PathBuf,
        log: String,
    },
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
}

impl TestbedError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestbedError {
        let what = what.into();
        move |source| TestbedError::Io { what, source }
    }

    pub(crate) fn daemon(what: impl Into<String>, log_path: &Path) -> TestbedError {
        TestbedError::Daemon {
            what: what.into(),
            log_path: log_path.to_path_buf(),
            log: log_tail(log_path, 30),
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}
