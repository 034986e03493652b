//! boto3 against `strato serve`: multipart flexible checksums (issue 14).
//! s3transfer's own multipart upload with SHA256 (COMPOSITE, checked against
//! the value computed here from the parts) and with the SDK defaults; a
//! hand-driven CRC32 FULL_OBJECT upload (Create/UploadPart/ListParts/
//! ListMultipartUploads/Complete with the whole-object value), a retried
//! Complete, GET/HEAD with checksum mode (botocore verifies the bodies),
//! `PartNumber` reads, BadDigest on a wrong part checksum, 416
//! InvalidPartNumber past the last part.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::process::Command;

use common::*;

const SCRIPT: &str = r#"
import sys, hashlib, base64, zlib, os
import boto3
from botocore.exceptions import ClientError
from boto3.s3.transfer import TransferConfig
endpoint, ak, sk, src = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak, aws_secret_access_key=sk,
                  region_name="us-east-1")
b64 = lambda b: base64.b64encode(b).decode()
s3.create_bucket(Bucket="mpb")
data = open(src, "rb").read()
MIB = 1 << 20
cfg = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
parts = [data[i:i + 5 * MIB] for i in range(0, len(data), 5 * MIB)]

# 1. upload_file with SHA256: s3transfer asks for the algorithm at create and
# names each part's checksum at complete -> COMPOSITE.
s3.upload_file(src, "mpb", "sha", Config=cfg, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
h = s3.head_object(Bucket="mpb", Key="sha", ChecksumMode="ENABLED")
want = b64(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()) + f"-{len(parts)}"
assert h["ChecksumSHA256"] == want, (h.get("ChecksumSHA256"), want)
assert h["ChecksumType"] == "COMPOSITE", h.get("ChecksumType")
print("composite sha256", h["ChecksumSHA256"])
g = s3.get_object(Bucket="mpb", Key="sha", ChecksumMode="ENABLED")
assert g["Body"].read() == data
g = s3.get_object(Bucket="mpb", Key="sha", PartNumber=2, ChecksumMode="ENABLED")
assert g["PartsCount"] == len(parts), g.get("PartsCount")
assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
assert g["ContentRange"] == f"bytes {5*MIB}-{10*MIB-1}/{len(data)}", g["ContentRange"]
assert g["ChecksumSHA256"] == b64(hashlib.sha256(parts[1]).digest())
assert g["Body"].read() == parts[1]
print("part 2 of", g["PartsCount"], g["ContentRange"])

# 2. upload_file with the SDK defaults.
s3.upload_file(src, "mpb", "default", Config=cfg)
h = s3.head_object(Bucket="mpb", Key="default", ChecksumMode="ENABLED")
print("default upload_file:", {k: v for k, v in h.items() if k.startswith("Checksum")})
s3.download_file("mpb", "default", src + ".back", Config=cfg)
assert open(src + ".back", "rb").read() == data

# 3. By hand: CRC32 FULL_OBJECT.
up = s3.create_multipart_upload(Bucket="mpb", Key="full", ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT")
assert up["ChecksumAlgorithm"] == "CRC32" and up["ChecksumType"] == "FULL_OBJECT", up
uid = up["UploadId"]
done = []
for i, p in enumerate(parts):
    r = s3.upload_part(Bucket="mpb", Key="full", UploadId=uid, PartNumber=i + 1, Body=p, ChecksumAlgorithm="CRC32")
    assert r["ChecksumCRC32"] == b64(zlib.crc32(p).to_bytes(4, "big"))
    done.append({"PartNumber": i + 1, "ETag": r["ETag"], "ChecksumCRC32": r["ChecksumCRC32"]})
lp = s3.list_parts(Bucket="mpb", Key="full", UploadId=uid)
assert lp["ChecksumAlgorithm"] == "CRC32" and lp["ChecksumType"] == "FULL_OBJECT", lp
assert [p["ChecksumCRC32"] for p in lp["Parts"]] == [d["ChecksumCRC32"] for d in done]
lu = s3.list_multipart_uploads(Bucket="mpb")
assert lu["Uploads"][0]["ChecksumAlgorithm"] == "CRC32", lu["Uploads"]
whole = b64(zlib.crc32(data).to_bytes(4, "big"))
c = s3.complete_multipart_upload(Bucket="mpb", Key="full", UploadId=uid, MultipartUpload={"Parts": done},
                                 ChecksumCRC32=whole, ChecksumType="FULL_OBJECT")
assert c["ChecksumCRC32"] == whole and c["ChecksumType"] == "FULL_OBJECT", c
# retried completion: same answer
c2 = s3.complete_multipart_upload(Bucket="mpb", Key="full", UploadId=uid, MultipartUpload={"Parts": done},
                                  ChecksumCRC32=whole, ChecksumType="FULL_OBJECT")
assert c2["ETag"] == c["ETag"], (c2, c)
try:
    s3.complete_multipart_upload(Bucket="mpb", Key="full", UploadId=uid, MultipartUpload={"Parts": done[:1]})
    raise SystemExit("a completion with other parts replayed")
except ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchUpload", e.response
g = s3.get_object(Bucket="mpb", Key="full", ChecksumMode="ENABLED")
assert g["ChecksumCRC32"] == whole and g["ChecksumType"] == "FULL_OBJECT"
assert g["Body"].read() == data
print("full-object crc32", whole, "retry etag", c2["ETag"])

# 4. mismatching part checksum -> BadDigest; part numbers past the end -> 416.
up = s3.create_multipart_upload(Bucket="mpb", Key="bad", ChecksumAlgorithm="SHA1")
try:
    s3.upload_part(Bucket="mpb", Key="bad", UploadId=up["UploadId"], PartNumber=1, Body=b"abc",
                   ChecksumSHA1=b64(hashlib.sha1(b"abd").digest()))
    raise SystemExit("bad checksum accepted")
except ClientError as e:
    assert e.response["Error"]["Code"] == "BadDigest", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400
try:
    s3.get_object(Bucket="mpb", Key="full", PartNumber=len(parts) + 1)
    raise SystemExit("part past the end served")
except ClientError as e:
    assert e.response["Error"]["Code"] == "InvalidPartNumber", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 416
s3.put_object(Bucket="mpb", Key="one", Body=b"single")
g = s3.get_object(Bucket="mpb", Key="one", PartNumber=1)
assert g["Body"].read() == b"single" and "PartsCount" not in g
print("ok")
"#;

#[test]
fn boto3_multipart_checksums_and_part_reads() {
    let server = Server::start("redb");
    let src = server.strato.dir.path().join("src.bin");
    // Three parts of 5 MiB, 5 MiB and a tail.
    write_random(&src, (12 << 20) + 1000, 14);
    let out = run_tool(
        Command::new(python())
            .arg("-c")
            .arg(SCRIPT)
            .args([&server.endpoint, &server.access_key, &server.secret_key])
            .arg(&src),
    );
    assert!(out.contains("composite sha256"), "{out}");
    assert!(out.contains("part 2 of 3"), "{out}");
    assert!(out.contains("full-object crc32"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}
