//! boto3 against `strato serve`: its default multithreaded multipart upload
//! and ranged, multithreaded download of 300 MiB; plus a Hadoop/JetS3t-style
//! access pattern of many concurrent ranged GETs of one object.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::process::Command;

use common::*;

const SCRIPT: &str = r#"
import sys, hashlib, random, concurrent.futures as cf
import boto3
from boto3.s3.transfer import TransferConfig
endpoint, ak, sk, src, dst = sys.argv[1:6]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
                  region_name="us-east-1")
s3.create_bucket(Bucket="boto")
cfg = TransferConfig()  # defaults: 8 MiB threshold and parts, 10 threads
s3.upload_file(src, "boto", "big.img", Config=cfg)
head = s3.head_object(Bucket="boto", Key="big.img")
print("etag", head["ETag"])
assert "-" in head["ETag"], "multipart ETag"
s3.download_file("boto", "big.img", dst, Config=cfg)
# Hadoop/JetS3t pattern: many concurrent ranged GETs of one large object
data = open(src, "rb").read()
size = len(data)
rng = random.Random(7)
ranges = [(o, min(size, o + rng.randint(1, 4 << 20)) - 1) for o in (rng.randrange(size) for _ in range(64))]
def fetch(r):
    a, b = r
    body = s3.get_object(Bucket="boto", Key="big.img", Range=f"bytes={a}-{b}")["Body"].read()
    assert body == data[a:b + 1], f"range {a}-{b}"
    return len(body)
with cf.ThreadPoolExecutor(16) as ex:
    total = sum(ex.map(fetch, ranges))
print("ranged", len(ranges), total)
"#;

#[test]
fn boto3_multipart_upload_and_ranged_download_300_mib() {
    let server = Server::start("redb");
    let t = server.strato.dir.path();
    let src = t.join("src.img");
    let data = write_random(&src, 300 << 20, 3);
    let dst = t.join("dst.img");
    let out = run_tool(
        Command::new(python())
            .arg("-c")
            .arg(SCRIPT)
            .args([&server.endpoint, &server.access_key, &server.secret_key])
            .arg(&src)
            .arg(&dst),
    );
    assert!(out.contains("etag"), "{out}");
    assert!(out.contains("ranged 64"), "{out}");
    assert_eq!(md5_file(&dst), md5_hex(&data), "download is byte-identical");
}
