//! HTTPS on the S3 port: `strato serve --tls-self-signed` and operator
//! certificates, through boto3, s3cmd and curl (HTTP/1.1 and h2 by ALPN);
//! clients that do not trust the CA are refused; SIGHUP reloads the
//! certificate without dropping connections; half-open and idle connections
//! are closed after the header timeout; the connection bound holds;
//! strato's own node-side clients (`pull`, `propagate --endpoint`) speak
//! https with `--ca` and refuse a certificate that does not verify.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod chain_util;
mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const AK: &str = "STRTESTACCESSKEY0001";
const SK: &str = "test-secret-key-0123456789abcdefghijklmn";

/// A `strato serve` with extra flags; its banner lines are kept.
struct Tls {
    strato: Strato,
    child: Child,
    banner: Vec<String>,
    endpoint: String,
}

impl Tls {
    fn start(strato: Strato, flags: &[&str]) -> Tls {
        let mut cmd = strato.cmd();
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("STRATO_ACCESS_KEY", AK)
            .env("STRATO_SECRET_KEY", SK)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("starting strato serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("banner line");
            let done = line.starts_with("aws:");
            banner.push(line);
            if done {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        let endpoint = banner
            .first()
            .and_then(|l| l.strip_prefix("strato serving S3 at "))
            .unwrap_or_else(|| panic!("unexpected banner {banner:?}"))
            .to_string();
        Tls {
            strato,
            child,
            banner,
            endpoint,
        }
    }

    fn host(&self) -> &str {
        self.endpoint.split("://").nth(1).unwrap_or_default()
    }

    fn port(&self) -> u16 {
        self.host().rsplit(':').next().unwrap().parse().unwrap()
    }

    fn field(&self, name: &str) -> String {
        self.banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} in {:?}", self.banner))
            .trim()
            .to_string()
    }

    fn ca(&self) -> PathBuf {
        PathBuf::from(self.field("CA file").split(" (").next().unwrap())
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(script: &str, args: &[&str]) -> std::process::Output {
    Command::new(common::python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running python")
}

const BOTO: &str = r#"
import sys, hashlib, boto3, botocore
endpoint, ak, sk, verify, src = sys.argv[1:6]
verify = False if verify == "off" else (None if verify == "default" else verify)
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
                  region_name="us-east-1", verify=verify)
try:
    s3.create_bucket(Bucket="tls")
except botocore.exceptions.SSLError as e:
    print("SSLERROR", e); sys.exit(3)
data = open(src, "rb").read()
s3.put_object(Bucket="tls", Key="obj", Body=data)
got = s3.get_object(Bucket="tls", Key="obj")["Body"].read()
assert got == data
print("OK", hashlib.md5(got).hexdigest())
"#;

#[test]
fn self_signed_https_serves_boto3_s3cmd_and_curl_h2_and_refuses_untrusting_clients() {
    let srv = Tls::start(Strato::new("redb"), &["--tls-self-signed"]);
    assert!(
        srv.endpoint.starts_with("https://127.0.0.1:"),
        "{}",
        srv.endpoint
    );
    let fp = srv.field("TLS SHA-256");
    assert_eq!(fp.len(), 95, "fingerprint {fp}");
    let ca = srv.ca();
    let key = srv.strato.data_dir().join("tls/key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // The printed client lines name the CA.
    assert!(srv
        .banner
        .iter()
        .any(|l| l.starts_with("s3cmd:") && l.contains("--ca-certs=")));
    assert!(srv
        .banner
        .iter()
        .any(|l| l.starts_with("aws:") && l.contains("AWS_CA_BUNDLE=")));

    let t = srv.strato.dir.path();
    let src = t.join("src.bin");
    let data = write_random(&src, 3 << 20, 11);
    let ca_s = ca.to_str().unwrap();
    let src_s = src.to_str().unwrap();

    // boto3 trusting the CA: round trip. Not trusting it: refused.
    let out = python(BOTO, &[&srv.endpoint, AK, SK, ca_s, src_s]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&md5_hex(&data)), "{stdout}");
    let out = python(BOTO, &[&srv.endpoint, AK, SK, "default", src_s]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a client without the CA must be refused"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CERTIFICATE_VERIFY_FAILED"));

    // s3cmd over --ssl with the CA.
    let host = srv.host().to_string();
    let got = t.join("s3cmd.bin");
    run_tool(Command::new(s3cmd_bin()).args([
        &format!("--host={host}"),
        &format!("--host-bucket={host}"),
        "--ssl",
        &format!("--ca-certs={ca_s}"),
        "--region=us-east-1",
        &format!("--access_key={AK}"),
        &format!("--secret_key={SK}"),
        "get",
        "s3://tls/obj",
        got.to_str().unwrap(),
    ]));
    assert_eq!(md5_file(&got), md5_hex(&data));

    // curl: h2 negotiated by ALPN, and HTTP/1.1 when asked; the CA verifies.
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = run_tool(Command::new("curl").args([
            "-s",
            flag,
            "--cacert",
            ca_s,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &format!("{}/metrics", srv.endpoint),
        ]));
        assert_eq!(out.trim(), format!("{want} 200"), "curl {flag}");
    }
    // Without the CA curl refuses (exit 60: peer certificate cannot be authenticated).
    let st = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            &format!("{}/metrics", srv.endpoint),
        ])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(60));
    // Plain HTTP to the TLS port gets no S3 answer.
    let mut s = TcpStream::connect(srv.host()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

/// The leaf certificate's SHA-256 as the server presents it now.
fn presented_fingerprint(port: u16, ca: &Path) -> String {
    let out = python(
        r#"
import sys, ssl, socket, hashlib
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection(("127.0.0.1", port)) as s:
    with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
        d = hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest().upper()
        print(":".join(d[i:i+2] for i in range(0, len(d), 2)))
"#,
        &[&port.to_string(), ca.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn operator_certificate_is_reloaded_on_sighup_without_dropping_connections() {
    // Two certificates from one CA, made by strato's self-signed path in
    // scratch directories: the operator's "old" and "renewed" files.
    let strato = Strato::new("redb");
    let t = strato.dir.path().to_path_buf();
    let issue = |dir: &Path| {
        // A throwaway serve run makes the files; the CA is shared by copying it.
        let s = Strato::new("redb");
        std::fs::create_dir_all(s.data_dir().join("tls")).unwrap();
        if dir.join("ca.pem").exists() {
            for f in ["ca.pem", "ca-key.pem"] {
                std::fs::copy(dir.join(f), s.data_dir().join("tls").join(f)).unwrap();
            }
        }
        let srv = Tls::start(s, &["--tls-self-signed"]);
        let tls = srv.strato.data_dir().join("tls");
        std::fs::create_dir_all(dir).unwrap();
        for f in ["ca.pem", "ca-key.pem", "cert.pem", "key.pem"] {
            std::fs::copy(tls.join(f), dir.join(f)).unwrap();
        }
        srv.field("TLS SHA-256")
    };
    let old_dir = t.join("old");
    let fp_old = issue(&old_dir);
    let new_dir = t.join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(old_dir.join(f), new_dir.join(f)).unwrap();
    }
    let fp_new = issue(&new_dir);
    assert_ne!(fp_old, fp_new);

    let live_cert = t.join("live-cert.pem");
    let live_key = t.join("live-key.pem");
    std::fs::copy(old_dir.join("cert.pem"), &live_cert).unwrap();
    std::fs::copy(old_dir.join("key.pem"), &live_key).unwrap();
    let srv = Tls::start(
        strato,
        &[
            "--tls-cert",
            live_cert.to_str().unwrap(),
            "--tls-key",
            live_key.to_str().unwrap(),
        ],
    );
    let ca = old_dir.join("ca.pem");
    assert_eq!(srv.field("TLS SHA-256"), fp_old);
    assert_eq!(presented_fingerprint(srv.port(), &ca), fp_old);

    // A connection opened before the reload keeps working after it.
    let script = r#"
import sys, ssl, http.client, time
port, ca, flag = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
c.request("GET", "/metrics"); r = c.getresponse(); r.read(); print("before", r.status, flush=True)
open(flag, "w").close()
for _ in range(300):
    if open(flag).read() == "reloaded":
        break
    time.sleep(0.05)
c.request("GET", "/metrics"); r = c.getresponse(); r.read(); print("after", r.status, flush=True)
"#;
    let flag = t.join("flag");
    let held = Command::new(common::python())
        .arg("-c")
        .arg(script)
        .args([
            &srv.port().to_string(),
            ca.to_str().unwrap(),
            flag.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !flag.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "client never connected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broken renewal (half-copied key) is refused and the old one kept.
    std::fs::write(&live_key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    signal_hup(srv.child.id());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(presented_fingerprint(srv.port(), &ca), fp_old);

    std::fs::copy(new_dir.join("cert.pem"), &live_cert).unwrap();
    std::fs::copy(new_dir.join("key.pem"), &live_key).unwrap();
    signal_hup(srv.child.id());
    let start = Instant::now();
    while presented_fingerprint(srv.port(), &ca) != fp_new {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "certificate not reloaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&flag, "reloaded").unwrap();
    let out = held.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("before 200") && out.contains("after 200"),
        "{out}"
    );
}

fn signal_hup(pid: u32) {
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn half_open_and_idle_connections_are_closed_and_the_connection_bound_holds() {
    let strato = Strato::new("redb");
    std::fs::create_dir_all(strato.data_dir()).unwrap();
    std::fs::write(
        strato.data_dir().join("strato.toml"),
        "[tls]\nheader_timeout_secs = 2\nidle_timeout_secs = 3\nmax_connections = 40\n",
    )
    .unwrap();
    let srv = Tls::start(strato, &[]);
    let addr = srv.host().to_string();

    // 40 clients connect and send nothing (or half a request line): the
    // bound is full, so one more honest request has to wait...
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|i| {
            let mut s = TcpStream::connect(&addr).unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /metr").unwrap();
            }
            s
        })
        .collect();
    let honest = |timeout: Duration| -> bool {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(timeout)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1.1 200"))
    };
    assert!(
        !honest(Duration::from_millis(700)),
        "the 41st connection was served while 40 were held"
    );
    // ...until the header timeout closes the silent ones (2 s) and the idle
    // timeout the half-request ones (3 s).
    let start = Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 256];
        // Closed (0) or answered with 408 and closed; never left open.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => panic!("connection still open after {:?}: {e}", start.elapsed()),
            }
        }
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        honest(Duration::from_secs(10)),
        "served once the silent clients are gone"
    );

    // A kept-alive connection that goes idle after a request is closed too.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("idle keep-alive connection still open: {e}"),
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "closed only after being idle"
    );
}

#[test]
fn non_loopback_listen_without_tls_warns_and_bad_tls_flags_are_refused() {
    let strato = Strato::new("redb");
    let mut child = strato
        .cmd()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("STRATO_ACCESS_KEY", AK)
        .env("STRATO_SECRET_KEY", SK)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("strato serving S3 at http://"), "{line}");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without TLS") && err.contains("in clear"),
        "{err}"
    );

    // A certificate file that does not exist: a clear error naming it.
    let out = strato.run(&[
        "serve",
        "--tls-cert",
        "/nonexistent/c.pem",
        "--tls-key",
        "/nonexistent/k.pem",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
    // --tls-cert without --tls-key is refused by the parser.
    let out = strato.run(&["serve", "--tls-cert", "/tmp/x.pem"]);
    assert!(!out.status.success());
}

/// `strato pull` and `strato propagate --endpoint` against an https
/// repository: with `--ca` they work; without it, or with a file that is
/// not a CA, they fail with a message naming the cause and write nothing.
#[test]
fn node_side_clients_speak_https_with_the_ca_and_refuse_what_does_not_verify() {
    let st = Strato::new("redb");
    st.ok(&["mb", "imgs"]);
    let src = st.dir.path().join("img");
    let data = write_random(&src, 5 << 20, 31);
    st.put(&src, "imgs/base.img", "block");
    let srv = Tls::start(st, &["--tls-self-signed"]);
    let ca = srv.ca();
    let ca_s = ca.to_str().unwrap();
    let t = tempfile::tempdir().unwrap();
    let keys = ["--access-key", AK, "--secret-key", SK];
    let pull = |endpoint: &str, extra: &[&str], name: &str| {
        let out = t.path().join(format!("{name}.img"));
        let o = Command::new(strato_bin())
            .args(["pull", "s3://imgs/base.img", "--endpoint", endpoint])
            .args(keys)
            .arg("--cache")
            .arg(t.path().join(format!("{name}-cache")))
            .arg("--out")
            .arg(&out)
            .args(extra)
            .env_remove("STRATO_CA")
            .output()
            .unwrap();
        (o, out)
    };

    let (o, out) = pull(&srv.endpoint, &["--ca", ca_s], "good");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(md5_file(&out), md5_hex(&data));

    let (o, out) = pull(&srv.endpoint, &[], "no-ca");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("certificate") && err.contains("--ca"),
        "no clear refusal: {err}"
    );
    assert!(
        !out.exists(),
        "nothing is written when the server is not trusted"
    );

    let not_ca = t.path().join("not-a-ca.pem");
    std::fs::write(&not_ca, "hello\n").unwrap();
    let (o, _) = pull(&srv.endpoint, &["--ca", not_ca.to_str().unwrap()], "bad-ca");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("no PEM certificate"), "{err}");

    let plain = srv.endpoint.replace("https://", "http://");
    let (o, _) = pull(&plain, &["--ca", ca_s], "plain");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("not an https:// endpoint"), "{err}");

    // A chain fed from the https repository.
    let mut agent = chain_util::Agent::local(chain_util::Kind::Files, &t.path().join("node"));
    let empty = t.path().join("no-local-store");
    let nodes = vec![agent.addr.clone()];
    let mut args = vec!["--endpoint", srv.endpoint.as_str(), "--ca", ca_s];
    args.extend(keys);
    let (ok, report, stderr) =
        chain_util::propagate(&[], &empty, "s3://imgs/base.img", &nodes, &args);
    assert!(ok, "{report}\n{stderr}");
    let img = agent.image("imgs/base.img", t.path());
    assert_eq!(md5_file(&img), md5_hex(&data));
    agent.stop();
}
