"""boto3 against two S3 servers side by side, in one run (benches/s3_peer.sh).

    python s3_peer.py SRC_FILE RUNS NAME=ENDPOINT [NAME=ENDPOINT ...]

Every server gets the same requests on the same file, one server after the
other within each run, so load drifts hit both alike: a single PutObject of
the whole file, a multipart upload (boto3's upload_file, 64 MiB parts, 4 in
flight), one GetObject of the whole object, and ranged GETs (64 reads of
4 MiB at the same pseudo-random offsets on every server). Every GET checks
the length it received; the first run also compares the whole body's MD5
with the source. Prints one table: medians in MiB/s and the ratio of the
first server to each other one."""

import hashlib, os, random, sys, time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1 << 20
AK = os.environ.get("PEER_AK", "STRBENCHACCESSKEY001")
SK = os.environ.get("PEER_SK", "bench-secret-key-0123456789abcdefghijkl")
RANGES, RANGE_LEN = 64, 4 * MIB
READ = MIB


def client(endpoint):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=AK, aws_secret_access_key=SK,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      read_timeout=600, connect_timeout=10),
    )


def drain(body, want, md5=None):
    n = 0
    while True:
        b = body.read(READ)
        if not b:
            break
        n += len(b)
        if md5 is not None:
            md5.update(b)
    if n != want:
        raise SystemExit(f"GET returned {n} bytes, wanted {want}")
    return n


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def one_run(c, bucket, src, size, offsets, check):
    out = {}
    with open(src, "rb") as f:
        out["single PUT"] = timed(lambda: c.put_object(Bucket=bucket, Key="single", Body=f))
    cfg = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=64 * MIB,
                         max_concurrency=4, use_threads=True)
    out["multipart PUT"] = timed(lambda: c.upload_file(src, bucket, "multi", Config=cfg))
    md5 = hashlib.md5() if check else None
    out["GET"] = timed(lambda: drain(c.get_object(Bucket=bucket, Key="single")["Body"], size, md5))
    if check and md5.hexdigest() != check:
        raise SystemExit("GET body differs from the source")

    def ranged():
        for off in offsets:
            r = c.get_object(Bucket=bucket, Key="single", Range=f"bytes={off}-{off + RANGE_LEN - 1}")
            drain(r["Body"], RANGE_LEN)
    out["ranged GET (64 x 4 MiB)"] = timed(ranged)
    return out


def main():
    src, runs, servers = sys.argv[1], int(sys.argv[2]), [a.split("=", 1) for a in sys.argv[3:]]
    size = os.path.getsize(src)
    rng = random.Random(14)
    offsets = [rng.randrange(0, size - RANGE_LEN) for _ in range(RANGES)]
    h = hashlib.md5()
    with open(src, "rb") as f:
        for b in iter(lambda: f.read(8 * MIB), b""):
            h.update(b)
    want_md5 = h.hexdigest()
    clients = {name: client(ep) for name, ep in servers}
    for name, c in clients.items():
        c.create_bucket(Bucket="peer")
    secs = {name: {} for name, _ in servers}
    for r in range(runs):
        for name, c in clients.items():
            print(f"s3_peer: run {r + 1} of {runs}: {name}", file=sys.stderr, flush=True)
            for op, s in one_run(c, "peer", src, size, offsets, want_md5 if r == 0 else None).items():
                secs[name].setdefault(op, []).append(s)
            for key in ("single", "multi"):
                c.delete_object(Bucket="peer", Key=key)
    mibs = {op: RANGES * RANGE_LEN / MIB if op.startswith("ranged") else size / MIB
            for op in secs[servers[0][0]]}
    med = {name: {op: mibs[op] / sorted(v)[len(v) // 2] for op, v in ops.items()}
           for name, ops in secs.items()}
    first = servers[0][0]
    others = [n for n, _ in servers[1:]]
    head = ["boto3, " + f"{size // MIB} MiB object (MiB/s)"] + [n for n, _ in servers] + [f"{first}/{o}" for o in others]
    print(f"\ns3_peer: medians of {runs} runs, same file, same client, servers alternating")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for op in mibs:
        row = [op] + [f"{med[n][op]:.0f}" for n, _ in servers] + [f"{med[first][op] / med[o][op]:.2f}" for o in others]
        print("| " + " | ".join(row) + " |")
    for name, ops in secs.items():
        print(f"{name} raw seconds: " + "; ".join(f"{op}: {', '.join(f'{s:.2f}' for s in v)}" for op, v in ops.items()))


if __name__ == "__main__":
    main()
