//! `strato nbd serve`: on-demand pseudo images read by real qemu-img and
//! qemu-io, directly and through qcow2 overlays; upstream failures.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

const KEY_A: &str = "STRTESTACCESSKEY0001";
const KEY_S: &str = "test-secret-key-0123456789abcdefghijklmn";

/// A child process killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `strato serve` on a fixed port, so it can come back at the same address.
fn serve(st: &Strato, port: u16) -> Proc {
    let mut child = st
        .cmd()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("STRATO_ACCESS_KEY", KEY_A)
        .env("STRATO_SECRET_KEY", KEY_S)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("strato serving S3"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    Proc(child)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `strato nbd serve` of s3://imgs/KEY on a unix socket; returns once listening.
fn nbd_serve(
    port: u16,
    key: &str,
    cache: &Path,
    sock: &Path,
) -> (
    Proc,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    nbd_serve_with(port, key, cache, sock, &[])
}

/// [`nbd_serve`] with more arguments.
fn nbd_serve_with(
    port: u16,
    key: &str,
    cache: &Path,
    sock: &Path,
    extra: &[&str],
) -> (
    Proc,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(strato_bin())
        .args([
            "--json",
            "nbd",
            "serve",
            "--image",
            &format!("s3://imgs/{key}"),
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--name",
            "img",
            "--cache",
        ])
        .arg(cache)
        .arg("--socket")
        .arg(sock)
        .args(extra)
        .env("STRATO_ACCESS_KEY", KEY_A)
        .env("STRATO_SECRET_KEY", KEY_S)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with("strato nbd serving nbd+unix:///img?socket="),
        "{first}"
    );
    (Proc(child), lines)
}

fn url(sock: &Path) -> String {
    format!("nbd+unix:///img?socket={}", sock.display())
}

fn image_server(size: usize, seed: u64) -> (tempfile::TempDir, Strato, Vec<u8>, u16, Proc) {
    let tmp = tempfile::tempdir().unwrap();
    let st = Strato::new("redb");
    let data = random_bytes(size, seed);
    let f = tmp.path().join("src.img");
    std::fs::write(&f, &data).unwrap();
    st.ok(&["mb", "imgs"]);
    st.put(&f, "imgs/a.img", "block");
    let port = free_port();
    let p = serve(&st, port);
    (tmp, st, data, port, p)
}

fn convert(src: &str, fmt: &str, out: &Path) {
    run_tool(
        Command::new(require_tool("qemu-img"))
            .args(["convert", "-f", fmt, "-O", "raw", src])
            .arg(out),
    );
}

fn sigterm(p: &Proc) {
    run_tool(Command::new("kill").args(["-TERM", &p.0.id().to_string()]));
}

#[test]
fn export_is_byte_identical_and_feeds_two_overlays_with_one_fetch() {
    let (tmp, _st, data, port, _server) = image_server(24 << 20, 11);
    let sock = tmp.path().join("nbd.sock");
    let (mut nbd, mut lines) = nbd_serve(port, "a.img", &tmp.path().join("cache"), &sock);

    let info = run_tool(
        Command::new(require_tool("qemu-img"))
            .arg("info")
            .arg(url(&sock)),
    );
    assert!(info.contains(&format!("{} bytes", data.len())), "{info}");

    // Two overlays over the pseudo image, read concurrently.
    let ovs: Vec<PathBuf> = (0..2)
        .map(|i| tmp.path().join(format!("vm{i}.qcow2")))
        .collect();
    for ov in &ovs {
        let st = Strato::new("redb");
        st.ok(&[
            "overlay",
            "create",
            "--backing",
            &url(&sock),
            "--size",
            &data.len().to_string(),
            ov.to_str().unwrap(),
        ]);
    }
    let readers: Vec<_> = ovs
        .iter()
        .map(|ov| {
            let (ov, out) = (ov.clone(), ov.with_extension("raw"));
            std::thread::spawn(move || {
                convert(ov.to_str().unwrap(), "qcow2", &out);
                md5_file(&out)
            })
        })
        .collect();
    let want = md5_hex(&data);
    for r in readers {
        assert_eq!(r.join().unwrap(), want);
    }
    // The export itself, read again (now from the node's cache), and by qemu-io.
    let out = tmp.path().join("direct.raw");
    convert(&url(&sock), "raw", &out);
    assert_eq!(md5_file(&out), want);
    let q = run_tool(
        Command::new(require_tool("qemu-io"))
            .args(["-r", "-f", "raw", "-c", "read 0 1M", "-c", "read 23M 1M"])
            .arg(url(&sock)),
    );
    assert!(
        q.contains("read 1048576/1048576 bytes at offset 24117248"),
        "{q}"
    );
    // Writes land in an overlay, not in the export.
    run_tool(
        Command::new(require_tool("qemu-io"))
            .args(["-c", "write -P 0x5a 0 64k"])
            .arg(&ovs[0]),
    );
    let q = run_tool(
        Command::new(require_tool("qemu-io"))
            .args(["-c", "read -P 0x5a 0 64k"])
            .arg(&ovs[0]),
    );
    assert!(!q.contains("failed"), "{q}");
    convert(ovs[1].to_str().unwrap(), "qcow2", &out);
    assert_eq!(md5_file(&out), want);

    sigterm(&nbd);
    let stats: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let _ = nbd.0.wait();
    eprintln!("export stats: {stats}");
    // Four full reads of random data, yet every chunk came from upstream once.
    assert!(
        stats["fetched_bytes"].as_u64().unwrap() <= data.len() as u64,
        "{stats}"
    );
    assert!(stats["cache_hits"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["complete"], true, "{stats}");
}

#[test]
fn upstream_down_fails_reads_with_eio_then_recovers() {
    let (tmp, st, data, port, server) = image_server(16 << 20, 12);
    let sock = tmp.path().join("nbd.sock");
    let (_nbd, _lines) = nbd_serve(port, "a.img", &tmp.path().join("cache"), &sock);
    let qemu_io = |cmd: &str| {
        Command::new(require_tool("qemu-io"))
            .args(["-r", "-f", "raw", "-c", cmd])
            .arg(url(&sock))
            .output()
            .unwrap()
    };
    let o = qemu_io("read 0 1M");
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("read 1048576/"));

    drop(server);
    let o = qemu_io("read 8M 1M");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
    // Data already local still reads.
    let o = qemu_io("read 0 1M");
    assert!(String::from_utf8_lossy(&o.stdout).contains("read 1048576/"));

    // A malformed client loses its own connection only.
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");
    s.write_all(&[0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0])
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    let _server = serve(&st, port);
    let out = tmp.path().join("after.raw");
    convert(&url(&sock), "raw", &out);
    assert_eq!(md5_file(&out), md5_hex(&data));
}

#[test]
fn restarted_export_reuses_its_cache_without_upstream() {
    let (tmp, _st, data, port, server) = image_server(8 << 20, 13);
    let sock = tmp.path().join("nbd.sock");
    let cache = tmp.path().join("cache");
    let (nbd, mut lines) = nbd_serve(port, "a.img", &cache, &sock);
    let out = tmp.path().join("first.raw");
    convert(&url(&sock), "raw", &out);
    sigterm(&nbd);
    let stats: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(stats["complete"], true, "{stats}");
    drop(nbd);

    // Upstream gone: the export comes back from the complete cached copy.
    drop(server);
    let (nbd, mut lines) = nbd_serve(port, "a.img", &cache, &sock);
    let out = tmp.path().join("second.raw");
    convert(&url(&sock), "raw", &out);
    assert_eq!(md5_file(&out), md5_hex(&data));
    sigterm(&nbd);
    let stats: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(stats["fetched_bytes"], 0, "{stats}");
    assert_eq!(stats["cache_misses"], 0, "{stats}");
}

#[test]
fn rack_level_pseudo_image_feeds_node_level_ones() {
    let (tmp, _st, data, port, _server) = image_server(16 << 20, 14);
    // Rack level: fetches from the repository, serves chunks to nodes.
    let rack_sock = tmp.path().join("rack.sock");
    let mut rack = Command::new(strato_bin())
        .args([
            "--json",
            "nbd",
            "serve",
            "--image",
            "s3://imgs/a.img",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--name",
            "img",
            "--serve-chunks",
            "127.0.0.1:0",
            "--cache",
        ])
        .arg(tmp.path().join("rack-cache"))
        .arg("--socket")
        .arg(&rack_sock)
        .env("STRATO_ACCESS_KEY", KEY_A)
        .env("STRATO_SECRET_KEY", KEY_S)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rack_lines = std::io::BufReader::new(rack.stdout.take().unwrap()).lines();
    let _nbd_line = rack_lines.next().unwrap().unwrap();
    let chunk_line = rack_lines.next().unwrap().unwrap();
    let rack_endpoint = chunk_line
        .strip_prefix("strato nbd serving chunks at ")
        .unwrap_or_else(|| panic!("{chunk_line}"))
        .to_string();
    let rack = Proc(rack);

    // Two node-level pseudo images using the rack as their upstream.
    let mut nodes = Vec::new();
    for n in 0..2 {
        let sock = tmp.path().join(format!("node{n}.sock"));
        let child = Command::new(strato_bin())
            .args([
                "--json",
                "nbd",
                "serve",
                "--image",
                "s3://imgs/a.img",
                "--endpoint",
                &rack_endpoint,
                "--name",
                "img",
                "--cache",
            ])
            .arg(tmp.path().join(format!("node{n}-cache")))
            .arg("--socket")
            .arg(&sock)
            .env("STRATO_ACCESS_KEY", KEY_A)
            .env("STRATO_SECRET_KEY", KEY_S)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut p = Proc(child);
        let mut lines = std::io::BufReader::new(p.0.stdout.take().unwrap()).lines();
        assert!(lines
            .next()
            .unwrap()
            .unwrap()
            .starts_with("strato nbd serving nbd+unix"));
        nodes.push((p, lines, sock));
    }
    for (_, _, sock) in &nodes {
        let out = sock.with_extension("raw");
        convert(&url(sock), "raw", &out);
        assert_eq!(md5_file(&out), md5_hex(&data));
    }
    for (p, mut lines, _) in nodes {
        sigterm(&p);
        let s: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert!(
            s["fetched_bytes"].as_u64().unwrap() >= data.len() as u64 / 2,
            "{s}"
        );
    }
    sigterm(&rack);
    let s: serde_json::Value = serde_json::from_str(&rack_lines.next().unwrap().unwrap()).unwrap();
    // The repository sent the image to the rack once for both nodes.
    assert!(
        s["fetched_bytes"].as_u64().unwrap() <= data.len() as u64,
        "{s}"
    );
    assert_eq!(s["complete"], true, "{s}");
}

#[test]
fn prefetch_completes_the_cache_and_corrupt_chunks_are_refetched() {
    let (tmp, _st, data, port, _server) = image_server(8 << 20, 15);
    let sock = tmp.path().join("nbd.sock");
    let cache = tmp.path().join("cache");
    let mut child = Command::new(strato_bin())
        .args([
            "--json",
            "nbd",
            "serve",
            "--image",
            "s3://imgs/a.img",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--name",
            "img",
            "--prefetch",
            "4",
            "--cache",
        ])
        .arg(&cache)
        .arg("--socket")
        .arg(&sock)
        .env("STRATO_ACCESS_KEY", KEY_A)
        .env("STRATO_SECRET_KEY", KEY_S)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines
        .next()
        .unwrap()
        .unwrap()
        .starts_with("strato nbd serving"));
    let p = Proc(child);
    std::thread::sleep(std::time::Duration::from_secs(3));
    sigterm(&p);
    let s: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    drop(p);
    assert_eq!(s["reads"], 0, "{s}");
    assert_eq!(s["complete"], true, "prefetch did not finish in 3 s: {s}");

    // Damage one byte in the middle of the cached chunk data.
    let seg = std::fs::read_dir(cache.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let (p, mut lines) = nbd_serve(port, "a.img", &cache, &sock);
    let out = tmp.path().join("out.raw");
    convert(&url(&sock), "raw", &out);
    assert_eq!(md5_file(&out), md5_hex(&data));
    sigterm(&p);
    let s: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(s["refetched_corrupt"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["fetched_bytes"].as_u64().unwrap() < data.len() as u64 / 4,
        "{s}"
    );
}

#[test]
fn silent_clients_are_closed_while_a_real_one_reads() {
    let (tmp, _st, data, port, _server) = image_server(4 << 20, 21);
    let sock = tmp.path().join("nbd.sock");
    let args = ["--handshake-timeout-ms", "1000", "--max-connections", "300"];
    let (_nbd, _lines) = nbd_serve_with(port, "a.img", &tmp.path().join("cache"), &sock, &args);
    let t0 = std::time::Instant::now();
    // 200 clients that connect and never negotiate.
    let mut silent: Vec<std::os::unix::net::UnixStream> = (0..200)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    // A real client is served while they hold their connections.
    let out = tmp.path().join("copy.raw");
    convert(&url(&sock), "raw", &out);
    assert_eq!(md5_file(&out), md5_hex(&data));
    // Each got the server's hello, then a close at the timeout.
    for s in &mut silent {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .expect("the server must close a silent connection");
        assert_eq!(&got[..8], b"NBDMAGIC");
    }
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "closed after {took:?}"
    );
    eprintln!(
        "200 silent NBD clients closed {:.2} s after connecting",
        took.as_secs_f64()
    );
}
