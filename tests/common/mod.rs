//! Helpers shared by the integration tests: run the real `strato` binary on a
//! temporary data directory, make test data at run time, find required tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, SeedableRng};

pub fn strato_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strato")
}

/// A required external tool; a missing one fails the test (never skips it).
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool {name:?} is not installed: run scripts/test.sh, which installs it");
}

pub struct Strato {
    pub dir: tempfile::TempDir,
    pub engine: &'static str,
}

impl Strato {
    pub fn new(engine: &'static str) -> Strato {
        Strato {
            dir: tempfile::tempdir().expect("tempdir"),
            engine,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(strato_bin());
        c.env("STRATO_DATA_DIR", self.data_dir())
            .env("STRATO_ENGINE", self.engine)
            .env_remove("STRATO_CONFIG");
        c
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strato {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run and require failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "strato {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running strato")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("strato --json prints JSON")
    }

    /// `put`, returning the new bytes it stored.
    pub fn put(&self, file: &Path, dest: &str, chunking: &str) -> serde_json::Value {
        self.json(&["put", file.to_str().unwrap(), dest, "--chunking", chunking])
    }

    pub fn stored_bytes(&self) -> u64 {
        self.json(&["stats"])["stored_bytes"].as_u64().unwrap()
    }
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill(&mut v[..]);
    v
}

pub fn write_random(path: &Path, n: usize, seed: u64) -> Vec<u8> {
    let v = random_bytes(n, seed);
    std::fs::write(path, &v).expect("writing test data");
    v
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

pub fn md5_file(path: &Path) -> String {
    use md5::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

pub fn run_tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `strato serve` child process on a free localhost port, killed on drop.
pub struct Server {
    pub strato: Strato,
    pub child: std::process::Child,
    pub endpoint: String,
    pub host: String,
    pub access_key: String,
    pub secret_key: String,
}

impl Server {
    pub fn start(engine: &'static str) -> Server {
        Self::start_with(Strato::new(engine), &[])
    }

    pub fn start_with(strato: Strato, env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let access_key = "STRTESTACCESSKEY0001".to_string();
        let secret_key = "test-secret-key-0123456789abcdefghijklmn".to_string();
        let mut cmd = strato.cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("STRATO_ACCESS_KEY", &access_key)
            .env("STRATO_SECRET_KEY", &secret_key)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting strato serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines
            .next()
            .and_then(std::result::Result::ok)
            .unwrap_or_default();
        let endpoint = first
            .strip_prefix("strato serving S3 at ")
            .unwrap_or_else(|| panic!("unexpected first line from strato serve: {first:?}"))
            .to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let host = endpoint.trim_start_matches("http://").to_string();
        Server {
            strato,
            child,
            endpoint,
            host,
            access_key,
            secret_key,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python interpreter of the test venv (boto3 installed there).
pub fn python() -> PathBuf {
    match std::env::var_os("STRATO_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
            assert!(
                venv.is_file(),
                "no test venv: run scripts/test.sh, which creates .venv with boto3"
            );
            venv
        }
    }
}

pub fn s3cmd_bin() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/s3cmd");
    if venv.is_file() {
        return venv;
    }
    require_tool("s3cmd")
}
