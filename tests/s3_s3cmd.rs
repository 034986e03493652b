//! s3cmd end to end against `strato serve`, with s3cmd's defaults
//! (signature v4, its own MD5 checks) and a path-style config.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn s3cmd(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(s3cmd_bin())
        .arg("-c")
        .arg(cfg)
        .args(args)
        .output()
        .expect("running s3cmd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "s3cmd {args:?} failed:\n{text}");
    text
}

#[test]
fn s3cmd_end_to_end() {
    let server = Server::start("redb");
    let t = server.strato.dir.path().to_path_buf();
    let cfg = t.join("s3cfg");
    std::fs::write(
        &cfg,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {}\nhost_bucket = {}\n\
             use_https = False\nsignature_v2 = False\n",
            server.access_key, server.secret_key, server.host, server.host
        ),
    )
    .unwrap();
    s3cmd(&cfg, &["mb", "s3://images"]);
    let one = t.join("one.bin");
    let one_data = write_random(&one, 1 << 20, 1);
    let hundred = t.join("hundred.bin");
    let hundred_data = write_random(&hundred, 100 << 20, 2);
    s3cmd(&cfg, &["put", one.to_str().unwrap(), "s3://images/one.bin"]);
    let out = s3cmd(
        &cfg,
        &[
            "put",
            "--debug",
            "--multipart-chunk-size-mb=15",
            hundred.to_str().unwrap(),
            "s3://images/hundred.bin",
        ],
    );
    assert!(
        out.contains("Uploading") && out.contains("in 7 parts"),
        "a 100 MiB put goes multipart in 7 parts"
    );

    let ls = s3cmd(&cfg, &["ls", "s3://images"]);
    assert!(
        ls.contains("s3://images/one.bin") && ls.contains("s3://images/hundred.bin"),
        "{ls}"
    );
    assert!(ls.contains("104857600"), "{ls}");
    let la = s3cmd(&cfg, &["la"]);
    assert!(la.contains("s3://images/hundred.bin"), "{la}");
    let info = s3cmd(&cfg, &["info", "s3://images/one.bin"]);
    assert!(
        info.contains(&md5_hex(&one_data)),
        "info shows the MD5:\n{info}"
    );

    let got = t.join("got.bin");
    s3cmd(
        &cfg,
        &[
            "get",
            "--force",
            "s3://images/hundred.bin",
            got.to_str().unwrap(),
        ],
    );
    assert_eq!(md5_file(&got), md5_hex(&hundred_data));
    s3cmd(
        &cfg,
        &[
            "get",
            "--force",
            "s3://images/one.bin",
            got.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&got).unwrap(), one_data);

    // sync a directory up, then down into an empty one
    let up = t.join("up");
    std::fs::create_dir_all(up.join("sub")).unwrap();
    let mut files = Vec::new();
    for (i, name) in ["a.txt", "b.bin", "sub/c.bin"].iter().enumerate() {
        files.push((
            name,
            write_random(&up.join(name), 10_000 * (i + 1), 10 + i as u64),
        ));
    }
    s3cmd(
        &cfg,
        &["sync", &format!("{}/", up.display()), "s3://images/tree/"],
    );
    let down = t.join("down");
    s3cmd(
        &cfg,
        &["sync", "s3://images/tree/", &format!("{}/", down.display())],
    );
    for (name, data) in &files {
        assert_eq!(&std::fs::read(down.join(name)).unwrap(), data, "{name}");
    }
    // a second sync up has nothing to do
    let again = s3cmd(
        &cfg,
        &["sync", &format!("{}/", up.display()), "s3://images/tree/"],
    );
    assert!(!again.contains("upload:"), "{again}");

    s3cmd(&cfg, &["del", "s3://images/one.bin"]);
    let ls = s3cmd(&cfg, &["ls", "s3://images"]);
    assert!(!ls.contains("one.bin"), "{ls}");
    s3cmd(&cfg, &["del", "--recursive", "--force", "s3://images/"]);
    s3cmd(&cfg, &["rb", "s3://images"]);
    let ls = s3cmd(&cfg, &["ls"]);
    assert!(!ls.contains("s3://images"), "{ls}");
}
